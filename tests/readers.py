"""Independent readers for checking datasets: Python's tarfile, json, zlib, numpy and pyarrow, never the project's code.

They follow the documented layout (README "On disk"): a shard is a tar of per-level payload
members ``lK.tok`` (zlib of each sample's tokens, back to back; plus its int32 positions where a
level has no shared ``lK.pos.npy``) and an ``index.json`` with keys, labels and per-level token
counts, payload sizes and CRC-32s; the manifest names every file relative to the dataset folder.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
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


def shard_samples(path: Path, dtype: str, token_shape: tuple[int, ...] = ()) -> dict[str, dict]:
    """{key: {"label": int, "levels": [(tokens, positions), ...]}} of one shard, decoded by hand."""
    members = tar_members(path)
    index = json.loads(members["index.json"])
    out = {key: {"label": label, "levels": []} for key, label in zip(index["keys"], index["labels"])}
    per_token = int(np.prod(token_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    for i, level in enumerate(index["levels"]):
        blob, pos = members[f"l{i}.tok"], 0
        shared = npy(members[f"l{i}.pos.npy"]) if f"l{i}.pos.npy" in members else None
        for key, n, size, crc in zip(index["keys"], level["tokens"], level["size"], level["crc32"]):
            payload = blob[pos:pos + size]
            pos += size
            assert zlib.crc32(payload) == crc, f"{path} {key} level {i}: CRC-32 differs"
            raw = zlib.decompress(payload)
            tokens = np.frombuffer(raw[: n * per_token], dtype=dtype).reshape((n, *token_shape))
            positions = shared if shared is not None else np.frombuffer(raw[n * per_token:], dtype=np.int32)
            out[key]["levels"].append((tokens, positions))
        assert pos == len(blob), f"{path} level {i}: {len(blob) - pos} bytes after the last payload"
    return out
