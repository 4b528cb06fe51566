"""Input scanners: every input gets exactly one key, in the records or in the rejects."""

from __future__ import annotations

import io

from PIL import Image

from icpc.pipeline.modalities.image import IMAGE_EXTENSIONS
from icpc.pipeline.scan import scan_class_folders, scan_path_csv


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


def _keys(records, rejects) -> list[str]:
    return [r.key for r in records] + [r.key for r in rejects]


def test_colliding_and_classless_files_are_rejected_under_keys_of_their_own(tmp_path):
    (tmp_path / "train" / "Bag").mkdir(parents=True)
    (tmp_path / "train" / "Bag" / "a b.png").write_bytes(_png())
    (tmp_path / "train" / "Bag" / "a_b.png").write_bytes(_png())   # sanitises to the same key
    (tmp_path / "train" / "loose.png").write_bytes(_png())          # no class folder
    records, rejects, classes = scan_class_folders(tmp_path, IMAGE_EXTENSIONS, 0, 0.0, 0.0)
    assert classes == ["Bag"] and len(records) == 1 and len(rejects) == 2
    keys = _keys(records, rejects)
    assert len(set(keys)) == 3, keys
    collided = next(r for r in rejects if "/Bag/" in r.source)
    assert "collides" in collided.error and collided.source != records[0].source
    loose = next(r for r in rejects if r.source.endswith("loose.png"))
    assert "not inside a class folder" in loose.error


def test_csv_duplicate_rows_get_distinct_reject_keys(tmp_path):
    (tmp_path / "x.png").write_bytes(_png())
    (tmp_path / "list.csv").write_text("path,label\nx.png,cat\nx.png,cat\nmissing.png,cat\n")
    records, rejects, _ = scan_path_csv(tmp_path / "list.csv", IMAGE_EXTENSIONS, 0, 0.0, 0.0)
    assert len(records) == 1 and len(rejects) == 2
    assert len(set(_keys(records, rejects))) == 3
