"""``icpc compress`` on a local Ray, its output checked with independent readers (tarfile, pyarrow, tar, webdataset, wids)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import BROKEN, TEST_IMAGES, TRAIN_IMAGES
from tests.readers import npy, tar_samples

SIDES, PATCH = [28, 24, 20, 16, 12], 4


def test_every_input_key_once_in_index_or_rejects(compressed, image_folder):
    index = pq.read_table(compressed / "index.parquet").to_pylist()
    rejects = pq.read_table(compressed / "rejects.parquet").to_pylist()
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
    manifest = json.loads((compressed / "manifest.json").read_text())
    ref_cells = (SIDES[0] // PATCH) ** 2
    index = {r["key"]: r for r in pq.read_table(compressed / "index.parquet").to_pylist()}
    found = set()
    for shard in manifest["shards"]:
        samples = tar_samples(compressed / shard["name"])
        assert len(samples) == shard["samples"]
        for key, members in samples.items():
            found.add(key)
            assert index[key]["shard"] == shard["name"] and index[key]["split"] == shard["split"]
            assert int(members["cls"]) == index[key]["label"]
            assert json.loads(members["json"])["key"] == key
            for level, side in enumerate(SIDES):
                tokens, pos = npy(members[f"l{level}.tok.npy"]), npy(members[f"l{level}.pos.npy"])
                n = (side // PATCH) ** 2
                assert tokens.shape == (n, PATCH * PATCH) and tokens.dtype == np.uint8
                assert pos.dtype == np.int32 and pos.shape == (n,)
                assert pos.min() >= 0 and pos.max() < ref_cells and np.all(np.diff(pos) > 0)
                assert index[key][f"tokens_l{level}"] == n
    assert found == set(index)


def test_level0_patches_are_the_original_pixels(compressed, image_folder):
    from PIL import Image

    row = pq.read_table(compressed / "index.parquet").to_pylist()[0]
    members = tar_samples(compressed / row["shard"])[row["key"]]
    pixels = np.asarray(Image.open(row["source"]))  # 28x28 grayscale
    patches = npy(members["l0.tok.npy"]).reshape(7, 7, 4, 4).transpose(0, 2, 1, 3).reshape(28, 28)
    assert np.array_equal(patches, pixels)


def test_manifest_counts_checksums_and_splits(compressed):
    manifest = json.loads((compressed / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["modality"] == "image"
    assert [lv["params"]["side"] for lv in manifest["spec"]["ladder"]] == SIDES
    assert manifest["spec"]["reference_grid"] == [7, 7]
    assert manifest["config"]["shard_samples"] == 100
    for shard in manifest["shards"]:
        data = (compressed / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    index = pq.read_table(compressed / "index.parquet")
    splits = index.column("split").to_pylist()
    assert splits.count("test") == TEST_IMAGES == manifest["counts"]["test"]
    assert splits.count("train") + splits.count("val") == TRAIN_IMAGES
    assert 0 < manifest["counts"]["val"] < TRAIN_IMAGES * 0.2
    # the test split comes only from test/ folders, never from train/
    for r in index.to_pylist():
        assert (r["split"] == "test") == ("/test/" in r["source"])
    assert not list(compressed.glob(".*.tmp")), "temporary shard files were left behind"


def test_shards_read_with_tar_webdataset_and_wids(compressed):
    import webdataset as wds
    import wids

    manifest = json.loads((compressed / "manifest.json").read_text())
    shard = manifest["shards"][0]
    path = compressed / shard["name"]
    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert len(listing) == shard["samples"] * (2 * len(SIDES) + 2)

    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert len(samples) == shard["samples"]
    assert all(f"l{len(SIDES) - 1}.pos.npy" in s for s in samples)

    ds = wids.ShardListDataset([{"url": str(path), "nsamples": shard["samples"]}])
    assert len(ds) == shard["samples"]
    first = ds[0]
    assert first["__key__"] == samples[0]["__key__"]
    assert set(k for k in first if not k.startswith("__")) >= {".cls", ".json", ".l0.tok.npy", ".l0.pos.npy"}


def test_compress_is_reproducible(compressed, image_folder, tmp_path, ray_local):
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    run_compress(finalize(CompressConfig(input=str(image_folder), output=str(tmp_path), shard_samples=100)),
                 progress=False)
    for shard in sorted(compressed.glob("*.tar")):
        assert (tmp_path / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_refuses_to_overwrite_without_flag(compressed, image_folder):
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_compress(finalize(CompressConfig(input=str(image_folder), output=str(compressed))), progress=False)
