"""Input scanners: a folder per class or a CSV of path,label (a path or a URL) into a listing of what to compress, and rejects.

A listing is a pyarrow table (``LISTING_SCHEMA``, one row per input, about 150 bytes each
instead of ~500 for a Python object), in the seeded order that ``shard_plan`` cuts into shards.
Every input found ends in the listing or in the rejects, with the reason: files outside the
class folders, unknown extensions, colliding keys, entries that cannot be listed or stat'ed.
Folders are listed through the storage layer (local, NFS, ``s3://``, ``gs://``), one class
folder per thread, so a bucket prefix with many classes is listed in parallel.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from icpc import storage
from icpc.contract import SPLITS, key_hash, sanitize_key, split_of, unit_hash

# ----------------------------------------------------------------------------- constants

LISTING_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),         # path or URL of the raw file; FILE:record N for a sample inside a table
    ("split", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("size", pa.int64()),            # bytes, as listed (-1 = unknown: read it to find out)
    ("payload", pa.large_binary()),  # the raw sample itself when it is not a file of its own (text), else null
])
CHUNK_ROWS = 2048                    # Python rows a listing thread holds before they become an Arrow batch: the
                                     # driver's peak stays ~LIST_THREADS x 2048 x 300 B, whatever the input size
LIST_THREADS = 16                    # class folders listed at once (object stores answer one page per request)


# ----------------------------------------------------------------------------- types


@dataclass
class Record:
    """One input sample before compression: where it is, which split and label it belongs to."""

    key: str
    source: str       # path or URL of the raw file (or FILE:record N for a sample that lives in a table)
    split: str
    label: int
    label_name: str
    payload: bytes | None = None   # the raw sample itself when it is not a file of its own (text)
    size: int = -1                 # bytes as listed; -1 = unknown


@dataclass
class Reject:
    key: str
    source: str
    stage: str        # scan, read, compress
    error: str


class ListingBuilder:
    """Rows appended one by one, held as Arrow batches of ``CHUNK_ROWS`` (so a big listing stays compact)."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self._cols: dict[str, list] = {n: [] for n in LISTING_SCHEMA.names}

    def add(self, key: str, source: str, split: str, label: int, label_name: str, size: int = -1,
            payload: bytes | None = None) -> None:
        for name, value in zip(LISTING_SCHEMA.names, (key, source, split, label, label_name, size, payload)):
            self._cols[name].append(value)
        if len(self._cols["key"]) >= CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._cols["key"]:
            self.batches.append(pa.RecordBatch.from_pydict(self._cols, schema=LISTING_SCHEMA))
            self._cols = {n: [] for n in LISTING_SCHEMA.names}

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self.batches, schema=LISTING_SCHEMA)


# ----------------------------------------------------------------------------- pure functions


def duplicate_key(key: str, source: str) -> str:
    """A reject key for an input whose key is already taken, so every input keeps a key of its own."""
    return f"{key}-dup-{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def records_table(records: Iterable[Record]) -> pa.Table:
    """A listing of Record objects (what a plugin's scanner may return)."""
    b = ListingBuilder()
    for r in records:
        b.add(r.key, r.source, r.split, int(r.label), r.label_name, int(getattr(r, "size", -1)),
              getattr(r, "payload", None))
    return b.table()


class RecordView:
    """The rows of a listing as ``Record`` objects, made one at a time (text's prepare hook iterates them)."""

    def __init__(self, table: pa.Table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[Record]:
        for batch in self.table.to_batches(CHUNK_ROWS):
            for row in batch.to_pylist():
                yield Record(**row)


def order_listing(table: pa.Table, seed: int, limit: int = 0) -> pa.Table:
    """The listing in shard order: by split (train, val, test), then by a hash of (seed, key).

    The order depends only on the seed and the keys, not on listing order, so every shard mixes
    classes (a folder-ordered shard would feed the trainer's shuffle buffer one class at a time)
    and a re-run cuts the same shards. ``limit`` keeps the first N of each split of that order.
    """
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    order = np.fromiter((unit_hash("order", seed, k) for batch in table.column("key").chunks
                         for k in batch.to_pylist()), dtype=np.float64, count=table.num_rows)
    split = pc.fill_null(pc.index_in(table.column("split"), value_set=pa.array(SPLITS)), len(SPLITS))
    split = split.to_numpy().astype(np.int8)
    idx = np.lexsort((order, split))
    if limit:
        sorted_split = split[idx]
        starts = np.searchsorted(sorted_split, sorted_split, side="left")
        ranks = np.arange(len(idx)) - starts
        idx = idx[ranks < limit]
    return table.take(pa.array(idx))


def shard_plan(listing: pa.Table, shard_samples: int) -> list[tuple[str, str, int, int]]:
    """(shard file name, split, first row, row count) of every shard of an ordered listing.

    Each split's rows, in listing order, cut into runs of ``shard_samples``: which shard a sample
    goes to is a pure function of the listing.
    """
    import pyarrow.compute as pc

    plan, start = [], 0
    for split in SPLITS:
        n = pc.sum(pc.equal(listing.column("split"), split)).as_py() or 0
        for i in range(0, n, shard_samples):
            plan.append((f"{split}-{i // shard_samples:06d}.tar", split, start + i, min(shard_samples, n - i)))
        start += n
    return plan


# ----------------------------------------------------------------------------- listing a tree


def list_entries(location: str) -> tuple[list[tuple[str, bool, int]], str]:
    """(name, is folder, bytes) of the entries directly in ``location``, sorted; and a problem ("" if none)."""
    if storage.is_local(location):
        try:
            with os.scandir(storage.local_path(location)) as it:
                entries = []
                for e in it:
                    try:
                        is_dir = e.is_dir()
                        entries.append((e.name, is_dir, -1 if is_dir else e.stat().st_size))
                    except OSError:
                        entries.append((e.name, False, -1))
                return sorted(entries), ""
        except OSError as exc:
            return [], f"folder cannot be listed: {type(exc).__name__}: {exc.strerror or exc}"
    fs, path = storage.filesystem(location)
    try:
        infos = fs.ls(path, detail=True)
    except FileNotFoundError:
        return [], ""
    out = [(storage.basename(i["name"]), i.get("type") == "directory", int(i.get("size") or 0)) for i in infos
           if i["name"].rstrip("/") != path.rstrip("/")]
    return sorted(out), ""


def walk_tree(location: str) -> Iterator[tuple[str, int, str]]:
    """(path relative to ``location`` with ``/``, bytes, problem) of every entry below it, sorted.

    ``problem`` is "" for a regular file; otherwise why the entry is not a readable input (a folder
    that cannot be listed, a broken link, a socket): such entries are reported, never skipped.
    Local folders are walked with ``os.scandir`` (symbolic links followed, each folder once);
    object stores with one recursive listing.
    """
    if storage.is_local(location):
        yield from _walk_local(storage.local_path(location), "", set())
        return
    fs, path = storage.filesystem(location)
    prefix = path.rstrip("/") + "/"
    for name, info in sorted(fs.find(path, detail=True).items()):
        if info.get("type") != "directory" and name.startswith(prefix) and not name.endswith("/"):
            yield name[len(prefix):], int(info.get("size") or 0), ""


def _walk_local(folder: str, rel: str, seen: set[tuple[int, int]]) -> Iterator[tuple[str, int, str]]:
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            yield rel or ".", -1, "folder link loop (already listed); not followed"
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield rel or ".", -1, f"folder cannot be listed: {type(exc).__name__}: {exc.strerror or exc}"
        return
    for e in entries:
        child = f"{rel}/{e.name}" if rel else e.name
        try:
            st = e.stat()  # follows symbolic links
        except OSError as exc:
            yield child, -1, f"cannot be stat'ed ({type(exc).__name__}: {exc.strerror or exc}; a broken link?)"
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_local(e.path, child, seen)
        elif stat.S_ISREG(st.st_mode):
            yield child, st.st_size, ""
        else:
            yield child, -1, "not a regular file (a socket, pipe or device)"


# ----------------------------------------------------------------------------- scanners


def scan_class_folders(root: str | os.PathLike, extensions: set[str], seed: int, val_fraction: float,
                       test_fraction: float, limit: int = 0, threads: int = LIST_THREADS
                       ) -> tuple[pa.Table, list[Reject], list[str]]:
    """Listing of a folder-per-class tree (``root/CLASS/FILE`` or ``root/SPLIT/CLASS/FILE``; a path or URL).

    With ``train/`` (and optionally ``val/``, ``test/``) folders, those splits are kept apart; a
    missing ``val/`` is carved from train by key hash (``val_fraction``). Without split folders,
    val and test are both carved by hash. Rejects (stage ``scan``): files outside the class
    folders (at the root, directly in a split folder, in a folder beside the split folders),
    unknown extensions, keys that collide after sanitising, entries that cannot be listed or
    stat'ed. Class folders are listed ``threads`` at a time. Returns (ordered listing, rejects,
    class names); label = index in class names.
    """
    root = storage.absolute(os.fspath(root))
    if not storage.is_dir(root):
        raise FileNotFoundError(f"input {root!r} is not a folder; pass a folder-per-class root "
                                f"(ROOT/CLASS/FILE or ROOT/train/CLASS/FILE)")
    top_entries, problem = list_entries(root)
    if problem:
        raise FileNotFoundError(f"input {root!r}: {problem}")
    top_dirs = {name for name, is_dir, _ in top_entries if is_dir}
    split_dirs = {s: storage.join(root, s) for s in SPLITS if s in top_dirs}
    if split_dirs and "train" not in split_dirs and "test" not in split_dirs:
        raise ValueError(f"input {root!r} has {sorted(split_dirs)} but neither train/ nor test/")
    rejects: list[Reject] = []

    def outside(rel: str, why: str) -> None:
        rejects.append(Reject(sanitize_key(rel), storage.join(root, rel), "scan", why))

    tops = split_dirs or {None: root}
    class_dirs: dict[str | None, list[str]] = {}
    for split_name, top in tops.items():
        entries, problem = list_entries(top) if split_name else (top_entries, "")
        if problem:
            outside(split_name, problem)
        class_dirs[split_name] = [n for n, is_dir, _ in entries if is_dir]
        where = f"{split_name}/CLASS/FILE" if split_name else "CLASS/FILE"
        for name, is_dir, _ in entries:
            if not is_dir:
                outside(f"{split_name}/{name}" if split_name else name,
                        f"not inside a class folder (expected ROOT/{where})")
    if split_dirs:  # files and folders beside train/ val/ test/ hold no split: say so for each file
        for name, is_dir, _ in top_entries:
            if not is_dir:
                outside(name, "not inside a split and class folder (expected ROOT/SPLIT/CLASS/FILE)")
        for name in sorted(top_dirs - set(SPLITS)):
            for rel, _, problem in walk_tree(storage.join(root, name)):
                outside(f"{name}/{rel}", problem or f"outside the split folders {sorted(split_dirs)} "
                        f"(expected ROOT/SPLIT/CLASS/FILE)")
    classes = sorted({c for names in class_dirs.values() for c in names})
    if not classes:
        raise ValueError(f"input {root!r} has no class folders (expected ROOT/CLASS/FILE)")

    def list_class(job: tuple[str | None, int, str]) -> list[tuple[str, int, str]]:
        split_name, _, name = job
        return list(walk_tree(storage.join(root, f"{split_name}/{name}" if split_name else name)))

    jobs = [(s, classes.index(c), c) for s in tops for c in class_dirs[s]]
    found = ListingBuilder()
    # Threads do the listing (I/O: object stores answer one page per request); this thread turns the
    # entries into rows, in job order, so the listing is deterministic and only one thread allocates it.
    for (split_name, label, name), entries in bounded_map(list_class, jobs, threads):
        base = f"{split_name}/{name}" if split_name else name
        folder = storage.join(root, base)
        for rel, size, problem in entries:
            rel_root = f"{base}/{rel}" if rel != "." else base
            key, source = sanitize_key(rel_root), storage.join(folder, rel) if rel != "." else folder
            ext = os.path.splitext(rel)[1].lower()
            if problem or ext not in extensions:
                rejects.append(Reject(key, source, "scan", problem or f"unsupported extension {ext!r}; "
                                      f"expected one of {sorted(extensions)}"))
                continue
            if split_name is None:
                split = split_of(key, seed, val_fraction, test_fraction)
            elif split_name == "train" and "val" not in split_dirs:
                split = split_of(key, seed, val_fraction)
            else:
                split = split_name
            found.add(key, source, split, label, name, size)
    table, collided = drop_collisions(found.table())
    return order_listing(table, seed, limit), rejects + collided, classes


def bounded_map(fn: Callable[[Any], Any], items: list, threads: int) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) in item order, ``threads`` at a time, at most ``2 * threads`` results held."""
    import collections

    with ThreadPoolExecutor(max(1, threads)) as pool:
        ahead: collections.deque = collections.deque()
        for item in items:
            ahead.append((item, pool.submit(fn, item)))
            if len(ahead) >= 2 * max(1, threads):
                item0, future = ahead.popleft()
                yield item0, future.result()
        while ahead:
            item0, future = ahead.popleft()
            yield item0, future.result()


def drop_collisions(table: pa.Table) -> tuple[pa.Table, list[Reject]]:
    """Keep the first row of each key (listing order); later rows with a taken key become rejects.

    Keys are compared by their 64-bit hashes first (8 bytes a row, not a hash table of strings);
    only rows whose hashes repeat are compared as strings.
    """
    keys = table.column("key")
    h = np.fromiter((key_hash(k) for chunk in keys.chunks for k in chunk.to_pylist()), dtype=np.uint64,
                    count=table.num_rows)
    by_hash = np.argsort(h, kind="stable")
    same = np.flatnonzero(h[by_hash][1:] == h[by_hash][:-1])
    if not len(same):
        return table, []
    rows = np.unique(by_hash[np.concatenate([same, same + 1])])  # listing order
    drop, rejects, first = [], [], {}
    for i in rows.tolist():
        key, source = keys[i].as_py(), table.column("source")[i].as_py()
        if key in first:
            rejects.append(Reject(duplicate_key(key, source), source, "scan",
                                  f"key {key} collides with {first[key]} after sanitising"))
            drop.append(i)
        else:
            first[key] = source
    keep = np.setdiff1d(np.arange(table.num_rows), np.array(drop, dtype=np.int64))
    return table.take(pa.array(keep)), rejects


def scan_path_csv(csv_path: str | os.PathLike, extensions: set[str], seed: int, val_fraction: float,
                  test_fraction: float, limit: int = 0, threads: int = LIST_THREADS
                  ) -> tuple[pa.Table, list[Reject], list[str]]:
    """Listing of a CSV with columns ``path,label`` (and optionally ``split``); the CSV and the paths may be URLs.

    Relative paths are taken from the CSV's folder. Rows with a missing file, an unknown
    extension, an empty label, a bad split or a duplicate key become rejects (stage ``scan``,
    source ``CSV:record N``, N counting data rows from 1). Without a ``split`` column (or where it
    is empty) val and test are carved by key hash. Files are looked up ``threads`` at a time.
    """
    import csv
    import io

    csv_path = storage.absolute(os.fspath(csv_path))
    if not storage.is_file(csv_path):
        raise FileNotFoundError(f"input {csv_path!r} is not a file; pass a CSV with columns path,label[,split]")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(csv_path), newline="")))
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: needs columns path and label (found {list(rows[0])})")
    classes = sorted({r["label"].strip() for r in rows if (r.get("label") or "").strip()})
    folder = storage.parent(csv_path)

    def locate(raw: str) -> str:
        return raw if storage.scheme(raw) or os.path.isabs(raw) else storage.join(folder, raw)

    def size_of(raw: str) -> int:
        """Bytes of the file a row names; -2 when there is none."""
        if not raw or os.path.splitext(raw)[1].lower() not in extensions:
            return -2
        try:
            return storage.size(locate(raw))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return -2

    paths = [(r.get("path") or "").strip() for r in rows]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        sizes = list(pool.map(size_of, paths))
    found, rejects, seen = ListingBuilder(), [], {}
    for n, (row, raw, size) in enumerate(zip(rows, paths, sizes), start=1):
        key = sanitize_key(raw or f"record{n}")
        label, split = (row.get("label") or "").strip(), (row.get("split") or "").strip()
        ext = os.path.splitext(raw)[1].lower()
        problem = ("empty path" if not raw
                   else f"unsupported extension {ext!r}; expected one of {sorted(extensions)}" if ext not in extensions
                   else f"no file at {locate(raw)}" if size == -2 else "empty label" if not label
                   else f"split {split!r} is not one of {SPLITS}" if split and split not in SPLITS
                   else f"key collides with {seen[key]} after sanitising" if key in seen else "")
        if problem:
            source = f"{csv_path}:record {n}"
            rejects.append(Reject(duplicate_key(key, source) if key in seen else key, source, "scan", problem))
            continue
        seen[key] = locate(raw)
        found.add(key, locate(raw), split or split_of(key, seed, val_fraction, test_fraction),
                  classes.index(label), label, size)
    return order_listing(found.table(), seed, limit), rejects, classes


Scanner = Callable[[Any], tuple[Any, list[Reject], list[str]]]


def file_scanner(extensions: set[str]) -> Scanner:
    """The scanner of a modality whose samples are files: a folder per class, or a CSV of path,label."""

    def scan(cfg: Any) -> tuple[pa.Table, list[Reject], list[str]]:
        args = (extensions, cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.limit,
                getattr(cfg, "list_threads", LIST_THREADS))
        if cfg.input.endswith(".csv") and storage.is_file(cfg.input):
            return scan_path_csv(cfg.input, *args)
        return scan_class_folders(cfg.input, *args)

    return scan
