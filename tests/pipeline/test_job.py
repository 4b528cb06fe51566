"""``icpc compress`` on a local Ray, its output checked with independent readers (tarfile, Pillow, pyarrow, tar).
What the WebDataset tools see of it: tests/pipeline/test_webdataset_tools.py."""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BROKEN, TEST_IMAGES, TRAIN_IMAGES
from tests.readers import decode_member, index_rows, manifest, rejects_rows, shard_samples

SIDES, PATCH = [28, 24, 20, 16, 12], 4


def test_every_input_key_once_in_index_or_rejects(compressed, image_folder):
    index, rejects = index_rows(compressed), rejects_rows(compressed)
    inputs = {str(p.relative_to(image_folder)) for p in image_folder.rglob("*") if p.is_file()}
    assert len(inputs) == TRAIN_IMAGES + TEST_IMAGES + len(BROKEN)
    seen = [Path(r["source"]).relative_to(image_folder).as_posix() for r in index + rejects]
    assert sorted(seen) == sorted(inputs)  # each input exactly once, in one table or the other
    assert len({r["key"] for r in index + rejects}) == len(inputs)
    by_name = {Path(r["source"]).name: r for r in rejects}
    assert set(by_name) == set(BROKEN)
    assert by_name["notes.txt"]["stage"] == "scan" and "extension" in by_name["notes.txt"]["error"]
    assert by_name["empty.png"]["stage"] == "read" and "empty" in by_name["empty.png"]["error"]
    assert by_name["truncated.png"]["stage"] == "compress" and by_name["truncated.png"]["error"]


def test_shards_hold_every_level_with_positions_in_the_reference_grid(compressed):
    ref_cells = (SIDES[0] // PATCH) ** 2
    index = {r["key"]: r for r in index_rows(compressed)}
    found = set()
    for shard in manifest(compressed)["shards"]:
        samples = shard_samples(compressed / shard["name"], "uint8", (PATCH * PATCH,))
        assert len(samples) == shard["samples"]
        for key, sample in samples.items():
            found.add(key)
            assert index[key]["shard"] == shard["name"] and index[key]["split"] == shard["split"]
            assert sample["label"] == index[key]["label"]
            for level, side in enumerate(SIDES):
                tokens, pos = sample["levels"][level]
                n = (side // PATCH) ** 2
                assert tokens.shape == (n, PATCH * PATCH)
                assert pos.dtype == np.int32 and pos.shape == (n,)
                assert pos.min() >= 0 and pos.max() < ref_cells and np.all(np.diff(pos) > 0)
                assert index[key][f"tokens_l{level}"] == n
    assert found == set(index)


def test_the_index_locates_every_payload_in_its_shard(compressed):
    """offset_lK/size_lK/crc32_lK of index.parquet point at the payload bytes themselves (one range read each)."""
    import tarfile

    rows = index_rows(compressed)
    for row in rows[::37]:
        data = (compressed / row["shard"]).read_bytes()
        with tarfile.open(compressed / row["shard"]) as tf:
            members = {m.name: m for m in tf.getmembers()}
        for level, side in enumerate(SIDES):
            payload = data[row[f"offset_l{level}"]:row[f"offset_l{level}"] + row[f"size_l{level}"]]
            member = members[f"{row['key']}.l{level}.npy.zst"]    # 28 px levels: exact pixels, npy in zstd
            assert (member.offset_data, member.size) == (row[f"offset_l{level}"], row[f"size_l{level}"])
            assert zlib.crc32(payload) == row[f"crc32_l{level}"]
            assert decode_member(payload, "npy.zst").shape == (side, side, 1)
            assert row[f"tokens_l{level}"] == (side // PATCH) ** 2


def test_level0_patches_are_the_original_pixels(compressed, image_folder):
    from PIL import Image

    row = index_rows(compressed)[0]
    tokens, _ = shard_samples(compressed / row["shard"], "uint8", (PATCH * PATCH,))[row["key"]]["levels"][0]
    pixels = np.asarray(Image.open(row["source"]))  # 28x28 grayscale
    assert np.array_equal(tokens.reshape(7, 7, 4, 4).transpose(0, 2, 1, 3).reshape(28, 28), pixels)


def test_manifest_counts_checksums_and_splits(compressed):
    m = manifest(compressed)
    assert m["schema_version"] == 3 and m["modality"] == "image"
    assert m["layout"]["name"] == "webdataset" and m["layout"]["version"] == 1
    assert [(lv["field"], lv["shape"]) for lv in m["layout"]["levels"]] == [(f"l{i}.npy.zst", [s, s, 1])
                                                                          for i, s in enumerate(SIDES)]
    assert sorted(m["layout"]["shared_positions"]) == ["0", "1", "2", "3", "4"]
    assert [lv["params"]["side"] for lv in m["spec"]["ladder"]] == SIDES
    assert m["spec"]["reference_grid"] == [7, 7]
    assert m["config"]["shard_samples"] == 100
    for shard in m["shards"]:
        data = (compressed / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    splits = [r["split"] for r in index_rows(compressed)]
    assert splits.count("test") == TEST_IMAGES == m["counts"]["test"]
    assert splits.count("train") + splits.count("val") == TRAIN_IMAGES
    assert 0 < m["counts"]["val"] < TRAIN_IMAGES * 0.2
    # the test split comes only from test/ folders, never from train/
    for r in index_rows(compressed):
        assert (r["split"] == "test") == ("/test/" in r["source"])
    assert not [p for p in compressed.rglob(".*") if ".tmp" in p.name], "temporary files were left behind"


def test_a_shard_is_one_group_of_members_per_sample(compressed):
    """tar -t lists, per sample in index order, its five level payloads, its label and its JSON."""
    shard = manifest(compressed)["shards"][0]
    path = compressed / shard["name"]
    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
    keys = [r["key"] for r in index_rows(compressed) if r["shard"] == shard["name"]]
    fields = [f"l{i}.npy.zst" for i in range(len(SIDES))] + ["cls", "json"]
    assert listing == [f"{key}.{field}" for key in keys for field in fields]
    samples = shard_samples(path, "uint8", (PATCH * PATCH,))
    assert samples[keys[0]]["meta"]["tokens"] == [(s // PATCH) ** 2 for s in SIDES]


def test_compress_is_reproducible(compressed, image_folder, tmp_path, ray_local):
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    run_compress(finalize(CompressConfig(input=str(image_folder), output=str(tmp_path), shard_samples=100)),
                 progress=False)
    before, again = manifest(compressed), manifest(tmp_path)
    assert before["version"] != again["version"]  # each run writes into a version folder of its own
    names = [Path(s["name"]).name for s in before["shards"]]
    assert names == [Path(s["name"]).name for s in again["shards"]]
    for a, b in zip(before["shards"], again["shards"]):
        assert (tmp_path / b["name"]).read_bytes() == (compressed / a["name"]).read_bytes(), a["name"]


def test_refuses_to_overwrite_without_flag(compressed, image_folder):
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_compress(finalize(CompressConfig(input=str(image_folder), output=str(compressed))), progress=False)
