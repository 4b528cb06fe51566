"""Independent readers for checking datasets: Python's tarfile, json, numpy, Pillow, zstandard and pyarrow,
never the project's code.

They follow the documented layout (README "On disk", schema 3): a shard is a WebDataset tar in which
a sample is the members ``KEY.lK.CODEC`` (one per level), ``KEY.cls`` and ``KEY.json``; the
manifest's ``layout.levels`` names each level's field, codec, view and shape, and
``layout.shared_positions`` holds the positions a level shares; the manifest names every file
relative to the dataset folder.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def manifest(root: Path) -> dict:
    return json.loads((Path(root) / "manifest.json").read_text())


def index_rows(root: Path) -> list[dict]:
    m = manifest(root)
    return pq.read_table(Path(root) / m.get("index", "index.parquet")).to_pylist()


def rejects_rows(root: Path) -> list[dict]:
    m = manifest(root)
    return pq.read_table(Path(root) / m.get("rejects", "rejects.parquet")).to_pylist()


def shard_paths(root: Path, split: str | None = None) -> list[Path]:
    return [Path(root) / s["name"] for s in manifest(root)["shards"] if split in (None, s["split"])]


def tar_members(path: Path) -> dict[str, bytes]:
    """Every member of a tar file by name (tarfile)."""
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def npy(data: bytes) -> np.ndarray:
    """Decode one ``.npy`` member, refusing pickled objects."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def dataset_root(shard: Path) -> Path:
    """The dataset folder of a shard: the nearest folder above it with a manifest.json."""
    for folder in Path(shard).parents:
        if (folder / "manifest.json").exists():
            return folder
    raise FileNotFoundError(f"no manifest.json above {shard}")


def decode_member(data: bytes, codec: str) -> np.ndarray:
    """One level payload by its codec: Pillow for pictures, numpy for npy, zstandard then numpy for npy.zst."""
    if codec == "npy":
        return npy(data)
    if codec == "npy.zst":
        import zstandard

        return npy(zstandard.ZstdDecompressor().decompress(data))
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def patches(array: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """An array tiled by ``block``-shaped cells (plus an optional channel axis) -> one row per cell, row-major."""
    grid = [n // b for n, b in zip(array.shape, block)]
    channels = array.shape[len(block):] or (1,)
    x = array.reshape(*[v for g, b in zip(grid, block) for v in (g, b)], *channels)
    k = len(block)
    x = x.transpose(*range(0, 2 * k, 2), *range(1, 2 * k, 2), 2 * k)
    return x.reshape(int(np.prod(grid)), -1)


def block_of(tokenization: dict, dims: int) -> tuple[int, ...]:
    patch = tokenization.get("tubelet", tokenization.get("patch"))
    return tuple(patch) if isinstance(patch, list) else (patch,) * dims


def shard_samples(path: Path, dtype: str, token_shape: tuple[int, ...] = ()) -> dict[str, dict]:
    """{key: {"label": int, "meta": dict, "levels": [(tokens, positions), ...]}} of one shard, decoded by hand."""
    m = manifest(dataset_root(path))
    layout, spec = m["layout"], m["spec"]
    shared = {int(k): np.asarray(v, dtype=np.int32) for k, v in (layout.get("shared_positions") or {}).items()}
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            key, _, field = member.name.partition(".")
            groups.setdefault(key, {})[field] = tf.extractfile(member).read()
    out = {}
    for key, fields in groups.items():
        assert set(fields) == {lv["field"] for lv in layout["levels"]} | {"cls", "json"}, (key, sorted(fields))
        levels = []
        for i, lv in enumerate(layout["levels"]):
            array = decode_member(fields[lv["field"]], lv["codec"])
            if lv["view"] == "ids_positions":
                tokens, positions = array[0].astype(dtype), array[1].astype(np.int32)
            else:
                if lv["view"] == "blocks":
                    array = array.reshape(lv["shape"])
                    grid = spec["ladder"][i]["grid"]
                    array = patches(array, block_of(spec["tokenization"], len(grid)))
                tokens, positions = array.astype(dtype).reshape(-1, *token_shape), shared[i]
            levels.append((tokens, positions))
        out[key] = {"label": int(fields["cls"]), "meta": json.loads(fields["json"]), "levels": levels}
    return out
