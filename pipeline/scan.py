"""Input scanners: a folder per class or a CSV of path,label into records (what to compress) and rejects."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from typing import Any, Callable

from icpc.contract import SPLITS, sanitize_key, split_of, unit_hash

@dataclass
class Record:
    """One input sample before compression: where it is, which split and label it belongs to."""

    key: str
    source: str       # path of the raw file (or FILE:ROW for a sample that lives in a table)
    split: str
    label: int
    label_name: str
    payload: bytes | None = None   # the raw sample itself when it is not a file of its own (text)


@dataclass
class Reject:
    key: str
    source: str
    stage: str        # scan, read, compress
    error: str


def scan_class_folders(root: str | os.PathLike, extensions: set[str], seed: int, val_fraction: float,
                       test_fraction: float, limit: int = 0) -> tuple[list[Record], list[Reject], list[str]]:
    """Records of a folder-per-class tree (``root/CLASS/FILE``, or ``root/SPLIT/CLASS/FILE``).

    With ``train/`` (and optionally ``val/``, ``test/``) folders, those splits are kept apart; a
    missing ``val/`` is carved from train by key hash (``val_fraction``). Without split folders,
    val and test are both carved by hash. Files with unknown extensions and keys that collide
    after sanitising become rejects (stage ``scan``). Records come in a seeded random order, so
    every shard mixes classes (a folder-ordered shard would feed the trainer's shuffle buffer one
    class at a time); ``limit`` keeps the first N per split of that order, a random subset.
    Returns (records, rejects, class names); label = index in class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input {str(root)!r} is not a folder; pass a folder-per-class root "
                                f"(ROOT/CLASS/FILE or ROOT/train/CLASS/FILE)")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs and "test" not in split_dirs:
        raise ValueError(f"input {str(root)!r} has {sorted(split_dirs)} but neither train/ nor test/")
    tops = split_dirs or {None: root}
    classes = sorted({d.name for top in tops.values() for d in top.iterdir() if d.is_dir()})
    if not classes:
        raise ValueError(f"input {str(root)!r} has no class folders (expected ROOT/CLASS/FILE)")
    records, rejects, seen = [], [], {}
    for split_name, top in tops.items():
        if split_name is not None:  # a file directly in train/ has no class: say so rather than skip it
            for path in sorted(p for p in top.iterdir() if p.is_file()):
                rejects.append(Reject(sanitize_key(str(path.relative_to(root))), str(path), "scan",
                                      f"not inside a class folder (expected {split_name}/CLASS/FILE)"))
        for label, name in enumerate(classes):
            folder = top / name
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                rel = str(path.relative_to(root))
                key = sanitize_key(rel)
                if path.suffix.lower() not in extensions:
                    rejects.append(Reject(key, str(path), "scan", f"unsupported extension {path.suffix!r}; "
                                          f"expected one of {sorted(extensions)}"))
                    continue
                if key in seen:
                    rejects.append(Reject(duplicate_key(key, str(path)), str(path), "scan",
                                          f"key {key} collides with {seen[key]} after sanitising"))
                    continue
                seen[key] = str(path)
                if split_name is None:
                    split = split_of(key, seed, val_fraction, test_fraction)
                elif split_name == "train" and "val" not in split_dirs:
                    split = split_of(key, seed, val_fraction)
                else:
                    split = split_name
                records.append(Record(key, str(path), split, label, name))
    return limit_per_split(shuffled(records, seed), limit), rejects, classes


def scan_path_csv(csv_path: str | os.PathLike, extensions: set[str], seed: int, val_fraction: float,
                  test_fraction: float, limit: int = 0) -> tuple[list[Record], list[Reject], list[str]]:
    """Records of a CSV with columns ``path,label`` (and optionally ``split``).

    Relative paths are taken from the CSV's folder. Rows with a missing file, an unknown
    extension, an empty label, a bad split or a duplicate key become rejects (stage ``scan``).
    Without a ``split`` column (or where it is empty) val and test are carved by key hash.
    """
    import csv

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"input {str(csv_path)!r} is not a file; pass a CSV with columns path,label[,split]")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: needs columns path and label (found {list(rows[0])})")
    classes = sorted({r["label"].strip() for r in rows if (r.get("label") or "").strip()})
    records, rejects, seen = [], [], {}
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        raw = (row.get("path") or "").strip()
        path = Path(raw) if Path(raw).is_absolute() else csv_path.parent / raw
        key = sanitize_key(raw or f"row{i}")
        label, split = (row.get("label") or "").strip(), (row.get("split") or "").strip()
        problem = ("empty path" if not raw else f"no file at {path}" if not path.is_file()
                   else f"unsupported extension {path.suffix!r}; expected one of {sorted(extensions)}"
                   if path.suffix.lower() not in extensions else "empty label" if not label
                   else f"split {split!r} is not one of {SPLITS}" if split and split not in SPLITS
                   else f"key collides with {seen[key]} after sanitising" if key in seen else "")
        if problem:
            source = f"{csv_path}:{i}"
            rejects.append(Reject(duplicate_key(key, source) if key in seen else key, source, "scan", problem))
            continue
        seen[key] = str(path)
        split = split or split_of(key, seed, val_fraction, test_fraction)
        records.append(Record(key, str(path), split, classes.index(label), label))
    return limit_per_split(shuffled(records, seed), limit), rejects, classes


def duplicate_key(key: str, source: str) -> str:
    """A reject key for an input whose key is already taken, so every input keeps a key of its own."""
    return f"{key}-dup-{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def limit_per_split(records: list[Record], limit: int) -> list[Record]:
    """The first ``limit`` records of each split (all when ``limit`` is 0)."""
    if not limit:
        return records
    counts: dict[str, int] = {}
    kept = []
    for r in records:
        counts[r.split] = counts.get(r.split, 0) + 1
        if counts[r.split] <= limit:
            kept.append(r)
    return kept


def shuffled(records: list[Record], seed: int) -> list[Record]:
    """``records`` in an order that depends only on ``seed`` and their keys (not on scan order)."""
    return sorted(records, key=lambda r: unit_hash("order", seed, r.key))


Scanner = Callable[[Any], tuple[list[Record], list[Reject], list[str]]]


def file_scanner(extensions: set[str]) -> Scanner:
    """The scanner of a modality whose samples are files: a folder per class, or a CSV of path,label."""

    def scan(cfg: Any) -> tuple[list[Record], list[Reject], list[str]]:
        args = (extensions, cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.limit)
        if Path(cfg.input).is_file() and cfg.input.endswith(".csv"):
            return scan_path_csv(cfg.input, *args)
        return scan_class_folders(cfg.input, *args)

    return scan
