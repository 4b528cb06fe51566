"""The writer side of a dataset: level-major shards (``icpc.contract``'s layout), index rows, the manifest.

A shard is built in memory (``ShardBuilder``), then written in one pass through the storage
layer, atomically (a temp name then a rename, or one completed upload), hashing as it goes:
whoever writes a shard (a Ray worker) knows its byte count and sha256 and reports them with the
shard's index rows; the driver only collects that metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icpc import storage
from icpc.contract import (INDEX_MEMBER, LAYOUT, SCHEMA_VERSION, TAR_BLOCK, TAR_END, Spec, encode_npy,
                           encode_payload, key_hash, payload_crc, positions_member, tar_header, tar_padding,
                           tokens_member)
from icpc.dataset import MANIFEST_FILE

REJECTS_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("stage", pa.string()),
                            ("error", pa.string())])


@dataclass
class ShardInfo:
    """What writing one shard produced: its manifest entry and one index row per sample."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    members: dict[str, list[int]]               # member name -> [data offset, size] in the shard file
    rows: list[dict[str, Any]] = field(default_factory=list)
    shared_positions: dict[int, list[int]] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256, "members": self.members}


class ShardBuilder:
    """Collect one shard's samples, then write it (``write``).

    ``shared_positions``: every sample of a level has the same positions (grid modalities); they
    are stored once per level (``lK.pos.npy``) and checked against every sample.
    """

    def __init__(self, spec: Spec, shared_positions: bool):
        self.spec, self.shared = spec, shared_positions
        self.levels = len(spec.ladder)
        self.payloads: list[list[bytes]] = [[] for _ in range(self.levels)]
        self.tokens: list[list[int]] = [[] for _ in range(self.levels)]
        self.positions: list[np.ndarray | None] = [None] * self.levels
        self.rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, record: Mapping[str, Any], levels: list[tuple[np.ndarray, np.ndarray]], meta: Mapping[str, Any]) -> None:
        """One compressed sample: ``record`` (key, source, split, label, label_name), every level, compressor meta."""
        if len(levels) != self.levels:
            raise ValueError(f"{record['key']}: {len(levels)} levels compressed, the ladder has {self.levels}")
        dtype = self.spec.token_dtype
        for i, (tokens, positions) in enumerate(levels):
            if len(tokens) != len(positions):
                raise ValueError(f"{record['key']} level {i}: {len(tokens)} tokens but {len(positions)} positions")
            tokens = np.asarray(tokens)
            if tokens.dtype != dtype or tokens.shape[1:] != self.spec.token_shape:
                raise ValueError(f"{record['key']} level {i}: tokens {tokens.dtype}{tokens.shape[1:]} but the spec "
                                 f"says {dtype}{self.spec.token_shape}")
            positions = np.asarray(positions, dtype=np.int32)
            if self.shared:
                if self.positions[i] is None:
                    self.positions[i] = positions
                elif not np.array_equal(self.positions[i], positions):
                    raise AssertionError(f"{record['key']} level {i}: positions differ from the level's shared ones; "
                                         f"the modality must not declare shared_positions")
            self.payloads[i].append(encode_payload(tokens, None if self.shared else positions))
            self.tokens[i].append(len(tokens))
        self.rows.append({"key": record["key"], "source": record["source"], "split": record["split"],
                          "label": int(record["label"]), "label_name": record["label_name"], **dict(meta)})

    def write(self, location: str, name: str, split: str) -> ShardInfo:
        """Write the shard to ``location`` atomically; ``name`` is its path relative to the dataset root."""
        members: list[tuple[str, list[bytes]]] = []
        for i in range(self.levels):
            members.append((tokens_member(i), self.payloads[i]))
            if self.shared and self.positions[i] is not None:
                members.append((positions_member(i), [encode_npy(self.positions[i])]))
        offsets, layout, pos = {}, {}, 0
        for member, parts in members:
            size = sum(len(p) for p in parts)
            layout[member] = [pos + TAR_BLOCK, size]
            starts = np.cumsum([0] + [len(p) for p in parts[:-1]]) + pos + TAR_BLOCK
            offsets[member] = starts.tolist()
            pos += TAR_BLOCK + size + (-size % TAR_BLOCK)
        index = self._index()
        index_bytes = json.dumps(index, separators=(",", ":")).encode()
        layout[INDEX_MEMBER] = [pos + TAR_BLOCK, len(index_bytes)]
        sha, written = hashlib.sha256(), 0
        with storage.atomic_write(location) as f:
            for member, parts in [*members, (INDEX_MEMBER, [index_bytes])]:
                size = sum(len(p) for p in parts)
                for chunk in (tar_header(member, size), *parts, tar_padding(size)):
                    f.write(chunk)
                    sha.update(chunk)
                    written += len(chunk)
            f.write(TAR_END)
            sha.update(TAR_END)
            written += len(TAR_END)
        rows = []
        for j, row in enumerate(self.rows):
            out = {"key": row["key"], "key_hash": key_hash(row["key"]), "shard": name, "row": j, **row}
            out["bytes"] = 0
            for i in range(self.levels):
                level = index["levels"][i]
                out[f"tokens_l{i}"] = level["tokens"][j]
                out[f"offset_l{i}"] = offsets[tokens_member(i)][j]
                out[f"size_l{i}"] = level["size"][j]
                out[f"crc32_l{i}"] = level["crc32"][j]
                out["bytes"] += level["size"][j]
            rows.append(out)
        shared = {i: p.tolist() for i, p in enumerate(self.positions) if self.shared and p is not None}
        return ShardInfo(name, split, len(self.rows), written, sha.hexdigest(), layout, rows, shared)

    def _index(self) -> dict[str, Any]:
        """The shard's own index (its last member): enough to read it without index.parquet. A level's
        payloads lie back to back from the start of its member, so sizes give the offsets."""
        return {
            "layout": LAYOUT, "samples": len(self.rows), "keys": [r["key"] for r in self.rows],
            "labels": [r["label"] for r in self.rows],
            "levels": [{"member": tokens_member(i), "tokens": self.tokens[i],
                        "size": [len(p) for p in self.payloads[i]],
                        "crc32": [payload_crc(p) for p in self.payloads[i]],
                        "positions": positions_member(i) if self.shared else None}
                       for i in range(self.levels)],
        }


def index_schema(levels: int, meta_types: Mapping[str, pa.DataType]) -> pa.Schema:
    """Columns of index.parquet: one row per sample (see README "On disk")."""
    fields = [("key", pa.string()), ("key_hash", pa.uint64()), ("shard", pa.string()), ("row", pa.int32()),
              ("source", pa.string()), ("split", pa.string()), ("label", pa.int64()), ("label_name", pa.string())]
    fields += list(meta_types.items())
    fields.append(("bytes", pa.int64()))
    for i in range(levels):
        fields += [(f"tokens_l{i}", pa.int32()), (f"offset_l{i}", pa.int64()), (f"size_l{i}", pa.int32()),
                   (f"crc32_l{i}", pa.uint32())]
    return pa.schema(fields)


def meta_types(rows: list[dict[str, Any]]) -> dict[str, pa.DataType]:
    """Arrow types of the compressor's meta fields (bool, int, float, str), from the rows that have them."""
    fixed = {"key", "key_hash", "shard", "row", "source", "split", "label", "label_name", "bytes"}
    out: dict[str, pa.DataType] = {}
    for row in rows:
        for k, v in row.items():
            if k in fixed or k.split("_l")[0] in ("tokens", "offset", "size", "crc32") or k in out:
                continue
            out[k] = (pa.bool_() if isinstance(v, bool) else pa.int64() if isinstance(v, int)
                      else pa.float64() if isinstance(v, float) else pa.string())
    return out


def write_parquet(rows: list[dict[str, Any]], location: str, schema: pa.Schema | None = None) -> None:
    """Rows as one Parquet table, written atomically through the storage layer."""
    table = pa.Table.from_pylist(rows, schema=schema) if rows or schema else pa.table({})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(location, buf.getvalue())


def write_manifest(folder: str, spec: Spec, seed: int, config: Mapping[str, Any], classes: list[str],
                   shards: list[ShardInfo], counts: Mapping[str, int], extra: Mapping[str, Any] = ()) -> dict[str, Any]:
    """Write ``manifest.json`` last: a dataset without one is not a dataset."""
    shared = next((s.shared_positions for s in shards if s.shared_positions), {})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "layout": {**LAYOUT, "shared_positions": {str(k): v for k, v in shared.items()} or None},
        "modality": spec.modality,
        "spec": spec.to_json(),
        "seed": seed,
        "classes": classes,
        "counts": dict(counts),
        "shards": [s.manifest_entry() for s in shards],
        "config": dict(config),
        **dict(extra),
    }
    storage.write_text(storage.join(folder, MANIFEST_FILE), json.dumps(manifest, indent=1))
    return manifest


@contextlib.contextmanager
def parquet_stream(location: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter whose tables stream to a local temp file; the file appears at ``location`` (a path
    or URL) in one piece when the block ends without error (``storage.atomic_write``)."""
    with storage.atomic_write(location) as f, pq.ParquetWriter(f, schema) as writer:
        yield writer
