"""The writer side of a dataset: schema 3 WebDataset shards (``icpc.contract``), index rows, the manifest.

A shard is built in memory (``ShardBuilder``: every sample's level payloads encoded by the
level's codec as it is added), then written in one pass through the storage layer, atomically (a
temp name then a rename, or one completed upload), hashing as it goes: whoever writes a shard (a
Ray worker) knows its byte count and sha256 and reports them with the shard's index rows (each
payload's offset, size and CRC-32); the driver only collects that metadata.

Why not webdataset's ``TarWriter``: it took 4.0 ms of CPU per 28 px sample (seven members: a
PAX-format ``TarFile.addfile`` per member, with a TarInfo copy and a stream copy each), five
times the 0.75 ms of encoding the sample's five PNGs and its JSON, and it ignores its ``format``
argument (PAX, where wids reads only ustar names). The members here get tarfile's own ustar
headers (``TarInfo.tobuf``, mtime 0, root): 0.3 ms per sample (measured on the loaded 2-core
machine, 500 samples, 2026-12-07), byte-identical re-runs, and every tool in
tests/pipeline/test_webdataset_tools.py reads the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icpc import storage
from icpc.codecs import decode, encode_level, plan_levels
from icpc.contract import (LABEL_FIELD, LAYOUT, META_FIELD, SCHEMA_VERSION, TAR_BLOCK, TAR_NAME_MAX, Spec, key_hash,
                           member_name, payload_crc)
from icpc.dataset import MANIFEST_FILE

REJECTS_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("stage", pa.string()),
                            ("error", pa.string())])
TAR_END = b"\0" * (2 * TAR_BLOCK)   # two zero blocks close a tar


@dataclass
class ShardInfo:
    """What writing one shard produced: its manifest entry and one index row per sample."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    levels: list[dict[str, Any]]                # the manifest's layout.levels the shard was written with
    rows: list[dict[str, Any]] = field(default_factory=list)
    shared_positions: dict[int, list[int]] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256}


class _HashingWriter:
    """A write-only file that passes bytes on and keeps their count and sha256."""

    def __init__(self, f):
        self.f, self.sha, self.written = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.written += len(data)
        return len(data)



def tar_header(name: str, size: int) -> bytes:
    """tarfile's ustar header for a member of ``size`` bytes: mtime 0, root, mode 644 (re-runs are byte-identical).
    Raises ValueError for a name over 100 bytes (ustar has no room for it)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


class ShardBuilder:
    """Collect one shard's samples, then write it (``write``).

    ``shared_positions``: every sample of a level has the same positions (grid modalities); they
    go once into the manifest and are checked against every sample. ``levels``: the manifest's
    ``layout.levels`` (codec per level, ``icpc.codecs.plan_levels``); None = the modality's default.
    """

    def __init__(self, spec: Spec, shared_positions: bool, levels: list[dict[str, Any]] | None = None):
        self.spec, self.shared = spec, shared_positions
        self.layout = levels if levels is not None else plan_levels(spec, shared_positions)
        self.levels = len(spec.ladder)
        if len(self.layout) != self.levels:
            raise ValueError(f"{len(self.layout)} level codecs for a ladder of {self.levels} levels")
        self.longest_field = max([len(e["field"]) for e in self.layout] + [len(LABEL_FIELD), len(META_FIELD)])
        self.members: list[list[tuple[str, bytes]]] = []     # per sample: (field, bytes) in write order
        self.tokens: list[list[int]] = []
        self.positions: list[np.ndarray | None] = [None] * self.levels
        self.rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, record: Mapping[str, Any], levels: list[tuple[np.ndarray, np.ndarray]], meta: Mapping[str, Any],
            level0: bytes | None = None) -> None:
        """One compressed sample: ``record`` (key, source, split, label, label_name), every level, compressor meta.

        ``level0``: level 0's member as the input's own bytes (``Modality.level0_as_input``), stored
        instead of an encoding of level 0's tokens where the layout marks level 0 ``as_input`` and
        the bytes decode, with the reader's decoder, to level 0's shape; else level 0 is encoded.
        Raises ValueError (the sample becomes a reject) when it cannot be stored as it is.
        """
        key = record["key"]
        if len(key) + 1 + self.longest_field > TAR_NAME_MAX:
            raise ValueError(f"sample key {key!r} has {len(key)} characters; a schema 3 tar member name "
                             f"'KEY.{self.layout[0]['field']}' holds at most {TAR_NAME_MAX} bytes (ustar, as wids "
                             f"reads it): shorten the input's path")
        if len(levels) != self.levels:
            raise ValueError(f"{key}: {len(levels)} levels compressed, the ladder has {self.levels}")
        dtype = self.spec.token_dtype
        payloads, counts, as_input = [], [], self._takes_as_input(level0)
        for i, (tokens, positions) in enumerate(levels):
            if len(tokens) != len(positions):
                raise ValueError(f"{key} level {i}: {len(tokens)} tokens but {len(positions)} positions")
            tokens = np.asarray(tokens)
            if tokens.dtype != dtype or tokens.shape[1:] != self.spec.token_shape:
                raise ValueError(f"{key} level {i}: tokens {tokens.dtype}{tokens.shape[1:]} but the spec "
                                 f"says {dtype}{self.spec.token_shape}")
            positions = np.asarray(positions, dtype=np.int32)
            if self.shared:
                if self.positions[i] is None:
                    self.positions[i] = positions
                elif not np.array_equal(self.positions[i], positions):
                    raise AssertionError(f"{key} level {i}: positions differ from the level's shared ones; "
                                         f"the modality must not declare shared_positions")
            payloads.append((self.layout[i]["field"], level0 if i == 0 and as_input
                             else encode_level(tokens, positions, self.spec, i, self.layout[i])))
            counts.append(len(tokens))
        row = {"key": key, "source": record["source"], "split": record["split"],
               "label": int(record["label"]), "label_name": record["label_name"], **dict(meta)}
        sidecar = {"key": key, "label": row["label"], "label_name": row["label_name"], "tokens": counts, **dict(meta)}
        if as_input:
            sidecar["level0_as_input"] = True
        payloads += [(LABEL_FIELD, str(row["label"]).encode()),
                     (META_FIELD, json.dumps(sidecar, separators=(",", ":"), default=_json_scalar).encode())]
        self.members.append(payloads)
        self.tokens.append(counts)
        self.rows.append(row)

    def _takes_as_input(self, data: bytes | None) -> bool:
        """Whether ``data`` may be level 0's member: the layout allows it and the reader decodes it to the level's shape."""
        entry = self.layout[0]
        if data is None or not entry.get("as_input"):
            return False
        try:
            decode(data, entry["codec"], entry.get("shape"))
        except ValueError:
            return False
        return True

    def write(self, location: str, name: str, split: str) -> ShardInfo:
        """Write the shard to ``location`` atomically; ``name`` is its path relative to the dataset root."""
        rows = []
        with storage.atomic_write(location) as f:
            out = _HashingWriter(f)
            for j, (row, members) in enumerate(zip(self.rows, self.members)):
                entry = {"key": row["key"], "key_hash": key_hash(row["key"]), "shard": name, "row": j, **row,
                         "bytes": 0}
                for field_name, data in members:
                    out.write(tar_header(member_name(row["key"], field_name), len(data)))
                    level = _level_of(field_name)
                    if level is not None:
                        entry[f"tokens_l{level}"] = self.tokens[j][level]
                        entry[f"offset_l{level}"] = out.written
                        entry[f"size_l{level}"] = len(data)
                        entry[f"crc32_l{level}"] = payload_crc(data)
                        entry["bytes"] += len(data)
                    out.write(data)
                    out.write(b"\0" * (-len(data) % TAR_BLOCK))
                rows.append(entry)
            out.write(TAR_END)
        shared = {i: p.tolist() for i, p in enumerate(self.positions) if self.shared and p is not None}
        return ShardInfo(name, split, len(self.rows), out.written, out.sha.hexdigest(), self.layout, rows, shared)


def _level_of(field_name: str) -> int | None:
    """The level of a payload field (``l3.png`` -> 3); None for ``cls`` and ``json``."""
    head = field_name.split(".", 1)[0]
    return int(head[1:]) if head[:1] == "l" and head[1:].isdigit() else None


def _json_scalar(value: Any) -> Any:
    """numpy scalars in a compressor's meta -> Python numbers."""
    return value.item() if isinstance(value, np.generic) else str(value)


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
    levels = next((s.levels for s in shards if s.levels), [])   # every shard of a run uses one layout
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "layout": {**LAYOUT, "levels": levels, "label": LABEL_FIELD, "meta": META_FIELD,
                   "shared_positions": {str(k): v for k, v in shared.items()} or None},
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


def write_wids_indexes(folder: str, version: str, shards: list[ShardInfo]) -> dict[str, str]:
    """One wids shard index per split, ``VERSION/SPLIT.wids.json`` (shard URLs relative to it), so
    ``wids.ShardListDataset(URL)`` opens a split by itself; {split: its location relative to ``folder``}."""
    out = {}
    for split in dict.fromkeys(s.split for s in shards):
        listing = [{"url": storage.basename(s.name), "nsamples": s.samples, "filesize": s.bytes}
                   for s in shards if s.split == split]
        name = f"{version}/{split}.wids.json" if version else f"{split}.wids.json"
        storage.write_text(storage.join(folder, name), json.dumps(
            {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split, "shardlist": listing}, indent=1))
        out[split] = name
    return out


@contextlib.contextmanager
def parquet_stream(location: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter whose tables stream to a local temp file; the file appears at ``location`` (a path
    or URL) in one piece when the block ends without error (``storage.atomic_write``)."""
    with storage.atomic_write(location) as f, pq.ParquetWriter(f, schema) as writer:
        yield writer
