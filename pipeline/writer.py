"""The writer side of a dataset: atomic WebDataset shards, the Parquet index, the rejects table and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from icpc.contract import SCHEMA_VERSION, Spec
from icpc.dataset import MANIFEST_FILE

REJECTS_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("stage", pa.string()),
                            ("error", pa.string())])


class _HashingFile:
    """A write-only file wrapper that counts bytes and computes the sha256 as it goes."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Write samples of one split into ``{split}-{i:06d}.tar``, ``max_samples`` per shard.

    Each shard is written as ``.{name}.tmp`` and renamed when complete, so a reader globbing
    ``*.tar`` never sees a partial shard even if the job dies mid-write.
    """

    def __init__(self, folder: str | os.PathLike, split: str, max_samples: int):
        self.folder, self.split, self.max_samples = Path(folder), split, max_samples
        self.shards: list[dict[str, Any]] = []
        self._tar = self._file = self._hashing = None
        self._count = 0

    @property
    def current(self) -> str:
        return f"{self.split}-{len(self.shards):06d}.tar"

    def write(self, sample: Mapping[str, Any]) -> str:
        """Append one encoded sample; returns the shard name it went into."""
        import webdataset as wds

        if self._tar is None:
            self._file = open(self.folder / f".{self.current}.tmp", "wb")
            self._hashing = _HashingFile(self._file)
            self._tar = wds.TarWriter(self._hashing, encoder=False, mtime=0)
            self._count = 0
        name = self.current
        self._tar.write(dict(sample))
        self._count += 1
        if self._count >= self.max_samples:
            self._seal()
        return name

    def close(self) -> list[dict[str, Any]]:
        if self._tar is not None:
            self._seal()
        return self.shards

    def _seal(self) -> None:
        name = self.current
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.folder / f".{name}.tmp", self.folder / name)
        self.shards.append({"name": name, "split": self.split, "samples": self._count,
                            "bytes": self._hashing.size, "sha256": self._hashing.sha.hexdigest()})
        self._tar = self._file = self._hashing = None


def write_parquet(rows: list[dict[str, Any]], path: str | os.PathLike, schema: pa.Schema | None = None) -> None:
    """Write rows as a Parquet table (atomically: temp file, then rename)."""
    table = pa.Table.from_pylist(rows, schema=schema) if rows or schema else pa.table({})
    tmp = Path(str(path) + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_manifest(folder: str | os.PathLike, spec: Spec, seed: int, config: Mapping[str, Any],
                   classes: list[str], shards: list[dict[str, Any]], counts: Mapping[str, int]) -> dict[str, Any]:
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "modality": spec.modality,
        "spec": spec.to_json(),
        "seed": seed,
        "classes": classes,
        "counts": dict(counts),
        "shards": shards,
        "config": dict(config),
    }
    tmp = Path(folder) / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, Path(folder) / MANIFEST_FILE)
    return manifest
