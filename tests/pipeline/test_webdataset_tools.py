"""What the WebDataset tools see of a compressed dataset, with their standard decoders and no icpc code:
webdataset, wids (with the shard index the job writes), Ray Data's read_webdataset, Megatron-Energon.

Each must see one record per input whose label and levels equal what the icpc reader returns. The 28 px
levels are ``npy.zst`` by default (exact pixels; the user's two-line zstd handler decodes them); a
dataset stored as PNG decodes with the tools' image decoders alone.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.readers import index_rows, manifest, patches

PATCH = 4
FIELDS = [f"l{i}.npy.zst" for i in range(5)]


def unzst(data: bytes) -> np.ndarray:
    """An npy.zst member: zstd around an .npy (what a user adds to webdataset's decoders)."""
    import zstandard

    return np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)), allow_pickle=False)


def zst_handler(key: str, data: bytes):
    return unzst(data) if key.endswith(".npy.zst") else None


@pytest.fixture(scope="module")
def icpc_view(compressed):
    """{key: (label, [level tokens ...])} of the val split, read by the project's own reader."""
    from icpc.dataset import SampleReader, open_dataset

    data = open_dataset(str(compressed))
    table = data.table("val")
    reader = SampleReader(table, data.spec, data.shared_positions)
    levels = len(data.spec.ladder)
    keys = table.keys()
    out = {key: (int(table.label[i]), []) for i, key in enumerate(keys)}
    for level in range(levels):
        for key, (tokens, _) in zip(keys, reader.read(np.arange(len(keys)), np.full(len(keys), level))):
            out[key][1].append(tokens)
    return out


def val_shards(root):
    return [root / s["name"] for s in manifest(root)["shards"] if s["split"] == "val"]


def _check(record_levels: dict[str, list[np.ndarray]], labels: dict[str, int], icpc_view) -> None:
    assert sorted(record_levels) == sorted(icpc_view)       # one record per input, no other records
    for key, levels in record_levels.items():
        label, expected = icpc_view[key]
        assert labels[key] == label
        for level, (pixels, tokens) in enumerate(zip(levels, expected)):
            pixels = np.asarray(pixels)
            pixels = pixels if pixels.ndim == 3 else pixels[..., None]
            np.testing.assert_array_equal(patches(pixels, (PATCH, PATCH)), tokens, err_msg=f"{key} level {level}")


def test_webdataset_decodes_one_record_per_input(compressed, icpc_view):
    import webdataset as wds

    urls = [str(p) for p in val_shards(compressed)]
    records = list(wds.WebDataset(urls, shardshuffle=False).decode(zst_handler))
    levels = {r["__key__"]: [r[f] for f in FIELDS] for r in records}
    assert len(records) == len(levels)
    assert all(r["json"]["tokens"] == [49, 36, 25, 16, 9] and r["json"]["key"] == r["__key__"] for r in records)
    _check(levels, {r["__key__"]: r["cls"] for r in records}, icpc_view)
    first = next(iter(wds.WebDataset(urls, shardshuffle=False).decode(zst_handler).to_tuple(FIELDS[0], "cls")))
    assert first[0].shape == (28, 28, 1) and first[0].dtype == np.uint8 and isinstance(first[1], int)


def test_picture_levels_decode_with_webdatasets_own_decoders(image_folder, ray_local, tmp_path):
    """``codecs=png``: plain ``.decode("l8")`` gives every level as a uint8 picture, equal to the icpc reader's."""
    import webdataset as wds

    from icpc.config import finalize
    from icpc.dataset import SampleReader, open_dataset
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    run_compress(finalize(CompressConfig(input=str(image_folder), output=str(tmp_path), shard_samples=40, limit=40),
                          ["codecs=png"]), progress=False)
    data = open_dataset(str(tmp_path))
    table = data.table("test")
    reader = SampleReader(table, data.spec, data.shared_positions)
    urls = [str(tmp_path / s["name"]) for s in manifest(tmp_path)["shards"] if s["split"] == "test"]
    records = {r["__key__"]: r for r in wds.WebDataset(urls, shardshuffle=False).decode("l8")}
    assert sorted(records) == sorted(table.keys())
    for level in range(5):
        for key, (tokens, _) in zip(table.keys(), reader.read(np.arange(len(table)), np.full(len(table), level))):
            picture = records[key][f"l{level}.png"]
            assert picture.dtype == np.uint8 and picture.ndim == 2
            np.testing.assert_array_equal(patches(picture[..., None], (PATCH, PATCH)), tokens)


def test_wids_reads_the_shard_index_the_job_writes(compressed, icpc_view):
    import wids

    m = manifest(compressed)
    index = compressed / m["wids"]["val"]
    spec = json.loads(index.read_text())
    assert sum(s["nsamples"] for s in spec["shardlist"]) == m["counts"]["val"]
    ds = wids.ShardListDataset(str(index))
    assert len(ds) == m["counts"]["val"]
    items = [ds[i] for i in range(len(ds))]
    def payload(value) -> np.ndarray:     # wids hands unknown extensions over as file objects
        return unzst(value.read() if hasattr(value, "read") else value)

    levels = {s["__key__"]: [payload(s[f".{f}"]) for f in FIELDS] for s in items}
    _check(levels, {s["__key__"]: s[".cls"] for s in items}, icpc_view)


def test_ray_data_read_webdataset_one_row_per_input(compressed, icpc_view, ray_local):
    import ray

    rows = ray.data.read_webdataset([str(p) for p in val_shards(compressed)]).take_all()
    levels = {r["__key__"]: [unzst(r[f]) for f in FIELDS] for r in rows}     # npy.zst rows hold the bytes
    assert len(rows) == len(levels)
    _check(levels, {r["__key__"]: int(r["cls"]) for r in rows}, icpc_view)


ENERGON_READ = """
import io, json, sys
import numpy as np, zstandard
from megatron.energon import Cooker, DefaultTaskEncoder, WorkerConfig, get_loader, get_val_dataset, stateless

@stateless
def cook(sample):
    return sample

class Encoder(DefaultTaskEncoder):
    cookers = [Cooker(cook)]

ds = get_val_dataset(sys.argv[1], split_part="val", worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
                     batch_size=None, task_encoder=Encoder())
out = {}
for s in get_loader(ds):
    levels = [np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(s[f"l{i}.npy.zst"]))) for i in range(5)]
    out[s["__key__"]] = [int(s["cls"]), [list(a.shape) for a in levels]]
print(json.dumps(out))
"""


def test_energon_prepare_counts_and_reads_one_sample_per_input(compressed, tmp_path):
    """``energon prepare`` (its own tar index, .nv-meta) over a copy of the version folder, then its loader."""
    import shutil

    m = manifest(compressed)
    version = tmp_path / "v"
    shutil.copytree(compressed / m["version"], version, ignore=shutil.ignore_patterns("*.parquet", "_run"))
    parts = {split: sorted(p.name for p in version.glob(f"{split}-*.tar")) for split in ("train", "val", "test")}
    args = [a for split, names in parts.items() for name in names for a in ("--split-parts", f"{split}:{name}")]
    energon = [sys.executable, "-c", "from megatron.energon.cli.main import main; main()"]
    subprocess.run([*energon, "prepare", str(version), "--non-interactive", "--sample-type", "CrudeWebdataset",
                    "--no-progress", *args], check=True, capture_output=True, text=True, timeout=300)
    counts = json.loads((version / ".nv-meta" / ".info.json").read_text())["shard_counts"]
    assert counts == {s["name"].split("/")[-1]: s["samples"] for s in m["shards"]}
    got = subprocess.run([sys.executable, "-c", ENERGON_READ, str(version)], check=True, capture_output=True,
                         text=True, timeout=300)
    samples = json.loads(got.stdout.strip().splitlines()[-1])
    val = {r["key"]: r["label"] for r in index_rows(compressed) if r["split"] == "val"}
    assert {k: v[0] for k, v in samples.items()} == val
    assert all(v[1] == [[s, s, 1] for s in (28, 24, 20, 16, 12)] for v in samples.values())


def test_level0_stores_a_jpeg_input_of_the_reference_side_as_its_own_bytes(image_folder, ray_local, tmp_path):
    """A JPEG input already at level 0's side is stored as is (its Exif dropped), read back by tarfile and
    webdataset as the input's pixels; other inputs, and every input with ``level0_as_input=false``, are encoded."""
    import tarfile

    from PIL import Image

    from icpc.codecs import jpeg_as_level
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    inputs, exif = tmp_path / "in", Image.Exif()
    exif[0x010F] = "camera"
    as_is = {}
    for label in ("Coat", "Sandal"):
        (inputs / label).mkdir(parents=True)
        for i, png in enumerate(sorted((image_folder / "train" / label).glob("*.png"))[:6]):
            side = 64 if i % 3 else 48            # one in three is not level 0's side: encoded
            picture = Image.open(png).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            picture.save(inputs / label / f"{png.stem}.jpg", quality=93, exif=exif.tobytes())
            if side == 64:
                as_is[png.stem] = (inputs / label / f"{png.stem}.jpg").read_bytes()
    settings = ["image.sides=[64,32]", "image.patch=16", "image.channels=3", "lossy_min_side=32",
                "val_fraction=0", "test_fraction=0"]
    for flag, out in ((True, tmp_path / "kept"), (False, tmp_path / "encoded")):
        run_compress(finalize(CompressConfig(input=str(inputs), output=str(out)),
                              settings + [f"level0_as_input={str(flag).lower()}"]), progress=False)
        m = manifest(out)
        assert m["layout"]["levels"][0]["codec"] == "jpg" and m["layout"]["levels"][0].get("as_input", False) is flag
        members, sidecars = {}, {}
        for shard in m["shards"]:
            with tarfile.open(out / shard["name"]) as tar:
                for member in tar.getmembers():
                    key, field = member.name.split(".", 1)
                    if field == "l0.jpg":
                        members[key] = tar.extractfile(member).read()
                    elif field == "json":
                        sidecars[key] = json.loads(tar.extractfile(member).read())
        assert len(members) == 12
        source = {r["key"]: r["source"].rsplit("/", 1)[-1][:-len(".jpg")] for r in index_rows(out)}
        members = {source[k]: data for k, data in members.items()}
        sidecars = {source[k]: meta for k, meta in sidecars.items()}
        stored = {k for k in members if sidecars[k].get("level0_as_input")}
        assert stored == (set(as_is) if flag else set())
        for key, data in members.items():
            picture = np.asarray(Image.open(io.BytesIO(data)))
            assert picture.shape == (64, 64, 3)
            if key in stored:   # the input's bytes less its metadata: the input's pixels exactly
                assert data == jpeg_as_level(as_is[key], 64, 3) and len(data) < len(as_is[key])
                assert b"camera" in as_is[key] and b"camera" not in data
                np.testing.assert_array_equal(picture, np.asarray(Image.open(io.BytesIO(as_is[key]))))
            elif key in as_is:   # re-encoded at codec_quality: a second JPEG generation
                assert data != jpeg_as_level(as_is[key], 64, 3)
