"""Input scanners: every input gets exactly one key, in the listing or in the rejects, and nothing is skipped in silence."""

from __future__ import annotations

import io
import os
import socket

import pyarrow as pa
import pytest
from PIL import Image

from icpc.pipeline.modalities.image import IMAGE_EXTENSIONS
from icpc.pipeline.scan import (LISTING_SCHEMA, Record, order_listing, records_table, scan_class_folders,
                                scan_path_csv, shard_plan)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


def _rows(listing: pa.Table) -> list[dict]:
    return listing.to_pylist()


def _keys(listing, rejects) -> list[str]:
    return [r["key"] for r in _rows(listing)] + [r.key for r in rejects]


def test_colliding_and_classless_files_are_rejected_under_keys_of_their_own(tmp_path):
    (tmp_path / "train" / "Bag").mkdir(parents=True)
    (tmp_path / "train" / "Bag" / "a b.png").write_bytes(_png())
    (tmp_path / "train" / "Bag" / "a_b.png").write_bytes(_png())   # sanitises to the same key
    (tmp_path / "train" / "loose.png").write_bytes(_png())          # no class folder
    listing, rejects, classes = scan_class_folders(tmp_path, IMAGE_EXTENSIONS, 0, 0.0, 0.0)
    rows = _rows(listing)
    assert classes == ["Bag"] and len(rows) == 1 and len(rejects) == 2
    keys = _keys(listing, rejects)
    assert len(set(keys)) == 3, keys
    collided = next(r for r in rejects if "/Bag/" in r.source)
    assert "collides" in collided.error and collided.source != rows[0]["source"]
    loose = next(r for r in rejects if r.source.endswith("loose.png"))
    assert "not inside a class folder" in loose.error
    assert rows[0]["size"] == len(_png())          # the listed size: the worker needs no extra stat


def test_files_outside_class_folders_and_unreadable_entries_are_rejects(tmp_path):
    """Root files, folders beside the split folders, broken links and sockets: each one a scan reject."""
    (tmp_path / "train" / "Bag").mkdir(parents=True)
    (tmp_path / "train" / "Bag" / "ok.png").write_bytes(_png())
    (tmp_path / "README.txt").write_text("about this data")                     # at the root
    (tmp_path / "extra" / "Bag").mkdir(parents=True)
    (tmp_path / "extra" / "Bag" / "x.png").write_bytes(_png())                  # beside train/
    os.symlink(tmp_path / "nowhere.png", tmp_path / "train" / "Bag" / "broken.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "train" / "Bag" / "s.png"))
    try:
        listing, rejects, _ = scan_class_folders(tmp_path, IMAGE_EXTENSIONS, 0, 0.0, 0.0)
    finally:
        sock.close()
    why = {os.path.relpath(r.source, tmp_path): r.error for r in rejects}
    assert [r["source"] for r in _rows(listing)] == [str(tmp_path / "train" / "Bag" / "ok.png")]
    assert set(why) == {"README.txt", "extra/Bag/x.png", "train/Bag/broken.png", "train/Bag/s.png"}, why
    assert "not inside a split and class folder" in why["README.txt"]
    assert "outside the split folders" in why["extra/Bag/x.png"]
    assert "broken link" in why["train/Bag/broken.png"]
    assert "not a regular file" in why["train/Bag/s.png"]
    assert all(r.stage == "scan" for r in rejects)


def test_a_root_file_without_split_folders_is_rejected(tmp_path):
    (tmp_path / "Bag").mkdir()
    (tmp_path / "Bag" / "a.png").write_bytes(_png())
    (tmp_path / "labels.csv").write_text("x")
    listing, rejects, _ = scan_class_folders(tmp_path, IMAGE_EXTENSIONS, 0, 0.0, 0.0)
    assert listing.num_rows == 1 and [r.source for r in rejects] == [str(tmp_path / "labels.csv")]


def test_csv_duplicate_rows_get_distinct_reject_keys_and_record_sources(tmp_path):
    (tmp_path / "x.png").write_bytes(_png())
    (tmp_path / "list.csv").write_text("path,label\nx.png,cat\nx.png,cat\nmissing.png,cat\n")
    listing, rejects, _ = scan_path_csv(tmp_path / "list.csv", IMAGE_EXTENSIONS, 0, 0.0, 0.0)
    assert listing.num_rows == 1 and len(rejects) == 2
    assert len(set(_keys(listing, rejects))) == 3
    assert sorted(r.source for r in rejects) == [f"{tmp_path / 'list.csv'}:record {n}" for n in (2, 3)]


def test_order_and_plan_are_pure_functions_of_the_listing():
    """Shards are runs of each split in a seeded key order: the input order does not matter."""
    recs = [Record(f"k{i}", f"/x/{i}.png", "train" if i % 4 else "test", i % 3, str(i % 3)) for i in range(23)]
    a = order_listing(records_table(recs), seed=5)
    b = order_listing(records_table(recs[::-1]), seed=5)
    assert a.column("key").to_pylist() == b.column("key").to_pylist()
    assert a.column("key").to_pylist() != order_listing(records_table(recs), seed=6).column("key").to_pylist()
    plan = shard_plan(a, 4)
    splits = a.column("split").to_pylist()
    assert [(n, s, c) for n, s, _, c in plan] == [("train-000000.tar", "train", 4), ("train-000001.tar", "train", 4),
                                                ("train-000002.tar", "train", 4), ("train-000003.tar", "train", 4),
                                                ("train-000004.tar", "train", 1), ("test-000000.tar", "test", 4),
                                                ("test-000001.tar", "test", 2)]
    for name, split, start, n in plan:
        assert set(splits[start:start + n]) == {split}
    limited = order_listing(records_table(recs), seed=5, limit=3)
    assert limited.column("key").to_pylist() == [k for k, s in zip(a.column("key").to_pylist(), splits)
                                                 if s == "train"][:3] + [
        k for k, s in zip(a.column("key").to_pylist(), splits) if s == "test"][:3]
    assert a.schema == LISTING_SCHEMA


@pytest.mark.parametrize("threads", [1, 8])
def test_parallel_listing_gives_the_same_listing(tmp_path, threads):
    for c in ("A", "B", "C"):
        (tmp_path / c).mkdir()
        for i in range(5):
            (tmp_path / c / f"{i}.png").write_bytes(_png())
    one, _, _ = scan_class_folders(tmp_path, IMAGE_EXTENSIONS, 0, 0.2, 0.2, threads=1)
    many, _, _ = scan_class_folders(tmp_path, IMAGE_EXTENSIONS, 0, 0.2, 0.2, threads=threads)
    assert one.equals(many) and one.num_rows == 15
