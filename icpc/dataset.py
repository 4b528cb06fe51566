"""The reader side of a dataset (DESIGN contract 3): its manifest, shard listing and index, by URL.

Training, evaluation, calibration and serving read datasets only through this module; the
pipeline's writer (``icpc.pipeline.writer``) is the other side of the same contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from icpc import storage
from icpc.contract import LAYOUT, SCHEMA_VERSION

INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
MANIFEST_FILE = "manifest.json"


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of the dataset at ``folder`` (a path or URL); refuses other schema versions with
    the command that rebuilds the dataset."""
    path = storage.join(folder, MANIFEST_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: {folder!s} is not an ICPC dataset; build one with 'icpc compress'")
    manifest = json.loads(storage.read_text(path))
    found = manifest.get("schema_version")
    if found != SCHEMA_VERSION:
        cfg = manifest.get("config", {})
        rebuild = (f"icpc compress --modality {manifest.get('modality', cfg.get('modality', 'MODALITY'))} "
                   f"--input {cfg.get('input') or 'INPUT'} --output {folder} --overwrite")
        old = {1: " (one WebDataset member per sample and level, which makes a trainer read every level)",
               2: " (level-major shards: one tar member per level holding every sample of the shard, which "
                  "WebDataset tools read as one record per level)"}.get(found, "")
        raise ValueError(f"{path}: dataset schema version {found}{old}, but this ICPC reads version "
                         f"{SCHEMA_VERSION} ({LAYOUT['name']} shards: one record per sample); rebuild it with:\n"
                         f"  {rebuild}")
    return manifest


def split_shards(manifest: Mapping[str, Any], folder: str, split: str) -> list[str]:
    """Locations of the shards of ``split``, in manifest order."""
    paths = [storage.join(folder, s["name"]) for s in manifest["shards"] if s["split"] == split]
    if not paths:
        raise ValueError(f"dataset {folder!s} has no {split!r} shards (splits: {dict(manifest['counts'])})")
    return paths


def split_shards_or_empty(manifest: Mapping[str, Any], folder: str, split: str) -> list[str]:
    return split_shards(manifest, folder, split) if manifest["counts"].get(split) else []



# ----------------------------------------------------------------------------- reading samples


@dataclass
class SampleTable:
    """One split's samples as numpy columns (from index.parquet): what a loader needs to read any of them.

    Row ``i`` is a sample; ``tokens``/``offset``/``size``/``crc32`` are ``(n, levels)``: token count,
    byte offset in its shard file, payload bytes and CRC-32 per level. ``shard`` indexes
    ``shard_locations`` (and ``shard_bytes``, their sizes per the manifest).
    """

    split: str
    key_hash: np.ndarray            # uint64 (n,)
    shard: np.ndarray               # int32 (n,)
    label: np.ndarray               # int64 (n,)
    tokens: np.ndarray              # int32 (n, levels)
    offset: np.ndarray              # int64 (n, levels)
    size: np.ndarray                # int32 (n, levels)
    crc32: np.ndarray               # uint32 (n, levels)
    shard_locations: list[str]
    shard_bytes: list[int]
    index_location: str = ""
    layout: list[dict[str, Any]] = field(default_factory=list)   # the manifest's layout.levels: codec per level
    shared_positions: dict[int, np.ndarray] = field(default_factory=dict)   # per level, where samples share them

    def __len__(self) -> int:
        return len(self.key_hash)

    def keys(self, rows: Sequence[int] | None = None) -> list[str]:
        """Sample keys (read from the index when asked for: the loader itself never needs them)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        with storage.arrow_file(self.index_location) as f:
            table = pq.read_table(f, columns=["key", "split"])
        keys = table.filter(pc.equal(table["split"], self.split))["key"].to_pylist()
        return keys if rows is None else [keys[i] for i in rows]


class Dataset:
    """An opened dataset: its manifest, spec, classes and the locations of its tables and shards."""

    def __init__(self, location: str, manifest: dict[str, Any]):
        from icpc.contract import Spec

        self.location, self.manifest = location, manifest
        self.spec = Spec.from_json(manifest["spec"])
        self.classes: list[str] = list(manifest["classes"])
        self.counts: dict[str, int] = dict(manifest["counts"])
        shared = (manifest.get("layout") or {}).get("shared_positions") or {}
        self.shared_positions = {int(k): np.asarray(v, dtype=np.int32) for k, v in shared.items()}

    @property
    def fingerprint(self) -> str:
        """A short content hash of the dataset (its shards' names and sha256): a rebuilt dataset differs."""
        import hashlib

        shards = [[s["name"], s.get("sha256", "")] for s in self.manifest["shards"]]
        return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]

    @property
    def index_location(self) -> str:
        return storage.join(self.location, self.manifest.get("index", INDEX_FILE))

    @property
    def rejects_location(self) -> str:
        return storage.join(self.location, self.manifest.get("rejects", REJECTS_FILE))

    def shards(self, split: str) -> list[str]:
        """Locations of the shards of ``split`` (empty when the split has no samples)."""
        return split_shards_or_empty(self.manifest, self.location, split)

    def read_index(self, columns: list[str] | None = None, split: str | None = None):
        """The index table (pyarrow), optionally only some columns and one split's rows."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = None if columns is None else sorted(set(columns) | ({"split"} if split else set()))
        with storage.arrow_file(self.index_location) as f:
            table = pq.read_table(f, columns=wanted)
        if split:
            table = table.filter(pc.equal(table["split"], split))
            if columns is not None and "split" not in columns:
                table = table.drop(["split"])
        return table

    def table(self, split: str) -> SampleTable:
        """The ``split``'s samples in index order (shard by shard, as written)."""
        levels = len(self.spec.ladder)
        cols = ["key_hash", "shard", "label", *(f"{c}_l{i}" for c in ("tokens", "offset", "size", "crc32")
                                                for i in range(levels))]
        t = self.read_index(cols, split)
        entries = [s for s in self.manifest["shards"] if s["split"] == split]
        ids = {s["name"]: i for i, s in enumerate(entries)}
        names = t["shard"].to_pylist()
        unknown = sorted(set(names) - set(ids))
        if unknown:
            raise ValueError(f"{self.index_location} names shards the manifest does not list: {unknown[:3]}; "
                             f"the dataset is inconsistent, rebuild it with 'icpc compress --overwrite'")

        def stack(c: str, dtype) -> np.ndarray:
            return np.stack([t[f"{c}_l{i}"].to_numpy().astype(dtype) for i in range(levels)], axis=1) \
                if len(t) else np.zeros((0, levels), dtype=dtype)

        return SampleTable(
            split, t["key_hash"].to_numpy().astype(np.uint64), np.array([ids[n] for n in names], dtype=np.int32),
            t["label"].to_numpy().astype(np.int64), stack("tokens", np.int32), stack("offset", np.int64),
            stack("size", np.int32), stack("crc32", np.uint32),
            [storage.join(self.location, s["name"]) for s in entries], [int(s["bytes"]) for s in entries],
            self.index_location, list(self.manifest["layout"]["levels"]), self.shared_positions)


def open_dataset(location: str) -> Dataset:
    """Open the dataset at ``location`` (a path or URL written by ``icpc compress``)."""
    return Dataset(location, read_manifest(location))


def shard_tables(shards: Sequence[str]) -> list[tuple[SampleTable, np.ndarray]]:
    """For each of ``shards`` (locations of one dataset's shards, as ``Dataset.shards`` gives them:
    ``DATASET/v-ID/NAME.tar``), its split's table and the rows of that shard in it (index order).
    The dataset is the nearest folder above the first shard whose manifest lists it."""
    if not shards:
        return []
    folder, data = storage.parent(shards[0]), None
    for _ in range(2):
        if storage.exists(storage.join(folder, MANIFEST_FILE)):
            data = open_dataset(folder)
            if any(storage.join(folder, s["name"]) == shards[0] for s in data.manifest["shards"]):
                break
        folder, data = storage.parent(folder), None
    if data is None:
        raise ValueError(f"{shards[0]} is not a shard listed by a manifest.json one or two folders above it")
    split_of = {storage.join(folder, s["name"]): s["split"] for s in data.manifest["shards"]}
    tables: dict[str, SampleTable] = {}
    out = []
    for location in shards:
        if location not in split_of:
            raise ValueError(f"{location} is not a shard of the dataset {folder}")
        split = split_of[location]
        table = tables.setdefault(split, data.table(split))
        out.append((table, np.flatnonzero(table.shard == table.shard_locations.index(location))))
    return out


class SampleReader:
    """Reads samples of a ``SampleTable`` at chosen levels: one range read per payload, never a whole shard.

    Checks, and counts instead of failing: a shard whose size differs from the manifest (truncated
    or replaced) is skipped whole, without reading it; a payload whose CRC-32, codec stream or shape
    is wrong is skipped. Payloads decode with the codec the manifest names for their level. ``skipped`` maps each reason to a count. Payloads closer than
    ``merge_gap`` bytes in one shard are fetched in one request (fewer GETs on an object store at
    the price of reading the gap). Used in one process (a DataLoader worker) at a time.
    """

    def __init__(self, table: SampleTable, spec, shared_positions: dict[int, np.ndarray], merge_gap: int = 0):
        from icpc.storage import RangeReader

        self.table, self.spec, self.shared, self.merge_gap = table, spec, shared_positions, merge_gap
        self.io = RangeReader()
        self.shard_ok: dict[int, bool] = {}
        self.skipped: dict[str, int] = {}
        self.payload_bytes = 0     # bytes of the payloads asked for (read amplification = io.bytes_read / this)

    def read(self, rows: Sequence[int], levels: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """(tokens, positions) of each (row, level); None where the sample was skipped.

        All the batch's range reads go out together (concurrent GETs on an object store).
        """
        t = self.table
        rows, levels = np.asarray(rows, dtype=np.int64), np.asarray(levels, dtype=np.int64)
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)
        by_shard: dict[int, list[int]] = {}
        for j, r in enumerate(rows):
            by_shard.setdefault(int(t.shard[r]), []).append(j)
        requests, owners = [], []   # one request per merged group: (location, start, end); (spans, members)
        for shard, js in by_shard.items():
            if not self._shard_ok(shard):
                self._skip("shard size differs from the manifest (truncated or replaced)", len(js))
                continue
            js.sort(key=lambda j: t.offset[rows[j], levels[j]])
            spans = [(int(t.offset[rows[j], levels[j]]), int(t.offset[rows[j], levels[j]] + t.size[rows[j], levels[j]]))
                     for j in js]
            for start, end, members in merge_ranges(spans, self.merge_gap):
                requests.append((t.shard_locations[shard], start, end))
                owners.append((start, [(js[k], spans[k]) for k in members]))
            self.payload_bytes += sum(b - a for a, b in spans)
        try:
            blobs = self.io.read_many(requests)
        except OSError as exc:
            self._skip(f"shards unreadable ({type(exc).__name__})", sum(len(m) for _, m in owners))
            return out
        for (start, members), blob in zip(owners, blobs):
            for j, (a, b) in members:
                out[j] = self._decode(blob[a - start:b - start], int(rows[j]), int(levels[j]))
        return out

    def _decode(self, data: bytes, row: int, level: int) -> tuple[np.ndarray, np.ndarray] | None:
        from icpc.codecs import decode_level
        from icpc.contract import payload_crc

        t = self.table
        if len(data) != t.size[row, level] or payload_crc(data) != t.crc32[row, level]:
            self._skip("payload CRC-32 differs from the index (corrupt bytes)")
            return None
        try:
            return decode_level(data, self.spec, level, t.layout[level], int(t.tokens[row, level]),
                                self.shared.get(level))
        except ValueError:
            self._skip("payload does not decode")
            return None

    def _shard_ok(self, shard: int) -> bool:
        if shard not in self.shard_ok:
            try:
                self.shard_ok[shard] = storage.size(self.table.shard_locations[shard]) == self.table.shard_bytes[shard]
            except OSError:
                self.shard_ok[shard] = False
        return self.shard_ok[shard]

    def _skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def merge_ranges(spans: Sequence[tuple[int, int]], gap: int) -> list[tuple[int, int, list[int]]]:
    """Sorted ``[start, end)`` spans -> ``(start, end, [span indices])`` groups whose holes are at most ``gap`` bytes."""
    groups: list[tuple[int, int, list[int]]] = []
    for k, (a, b) in enumerate(spans):
        if groups and a - groups[-1][1] <= gap:
            start, end, members = groups[-1]
            groups[-1] = (start, max(end, b), members + [k])
        else:
            groups.append((a, b, [k]))
    return groups
