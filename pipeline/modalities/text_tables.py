"""Text input reader: CSV, JSONL or Parquet rows (configurable text/label/split columns) into records with payloads.

``--input`` is one table file, or a folder holding ``train.*``/``val.*``/``test.*`` tables (any of
the three formats). A text is not a file of its own, so each record carries the raw bytes of its
text cell as ``payload`` and ``FILE:ROW`` as its source (ROW: the CSV/JSONL line, the Parquet
row). Cells are kept as raw bytes (invalid UTF-8 included) so that the compressor, not the
reader, decides what is unreadable; rows without a label, with an unknown split or with an
oversized text become rejects at stage ``scan``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from icpc.contract import SPLITS, sanitize_key, split_of
from icpc.pipeline.scan import Record, Reject, duplicate_key, limit_per_split, shuffled

TABLE_EXTENSIONS = (".csv", ".jsonl", ".parquet")


def read_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {column: value}) of a table; text cells as raw bytes, other cells as str.

    A JSONL line that is not a JSON object yields ``{"__error__": reason}`` (a reject, not a crash).
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        # surrogateescape keeps undecodable bytes, and .encode(..., "surrogateescape") gives them back
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns[:2] if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: no column(s) {missing} (found {reader.fieldnames}); set "
                                 f"text.text_column / text.label_column")
            for row in reader:
                yield reader.line_num, {c: row.get(c) for c in columns}
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, {"__error__": f"not a JSON object ({exc.msg} at column {exc.colno})"}
                    continue
                yield i, ({c: obj.get(c) for c in columns} if isinstance(obj, dict)
                          else {"__error__": f"not a JSON object but {type(obj).__name__}"})
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in columns[:2] if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (found {table.column_names}); set "
                             f"text.text_column / text.label_column")
        text = table.column(columns[0])
        if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
            text = text.cast(pa.large_binary())  # raw bytes, no UTF-8 check here (the compressor's job)
        cols = {c: table.column(c).to_pylist() for c in columns[1:] if c in table.column_names}
        for i, value in enumerate(text.to_pylist()):
            yield i, {columns[0]: value, **{c: v[i] for c, v in cols.items()}}
    else:
        raise ValueError(f"{path}: unsupported table format {suffix!r}; use one of {TABLE_EXTENSIONS}")


def cell_bytes(value: Any) -> bytes | None:
    """Raw bytes of a text cell (None when the cell is missing)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


def table_files(root: Path) -> dict[str | None, Path]:
    """{split: table} of a folder (``train.csv``, ``test.jsonl``, ...) or {None: file} of one table."""
    if root.is_file():
        return {None: root}
    if not root.is_dir():
        raise FileNotFoundError(f"input {str(root)!r} does not exist; pass a CSV/JSONL/Parquet file or a "
                                f"folder with train/val/test tables")
    found = {s: p for s in SPLITS for p in sorted(root.iterdir()) if p.stem == s and p.suffix.lower() in TABLE_EXTENSIONS}
    if "train" not in found and "test" not in found:
        raise ValueError(f"input folder {str(root)!r} has no train.* or test.* table ({TABLE_EXTENSIONS})")
    return found


def scan_text_tables(cfg: Any) -> tuple[list[Record], list[Reject], list[str]]:
    """Records of every row of the input table(s) (``cfg``: CompressConfig; columns from ``cfg.text``)."""
    t = cfg.text
    columns = (t.text_column, t.label_column, t.split_column)
    rows: list[tuple[str, Path, int, dict[str, Any]]] = []
    for split_name, path in table_files(Path(cfg.input)).items():
        rows += [(split_name, path, i, row) for i, row in read_rows(path, columns)]
    classes = sorted({str(r[t.label_column]).strip() for *_, r in rows
                      if r.get(t.label_column) is not None and str(r[t.label_column]).strip()})
    has_val = any(s == "val" for s, *_ in rows) or any(str(r.get(t.split_column) or "").strip() == "val"
                                                      for *_, r in rows)
    records, rejects, seen = [], [], set()
    for split_name, path, i, row in rows:
        key = sanitize_key(f"{path.stem}-{i}")
        label = str(row.get(t.label_column) if row.get(t.label_column) is not None else "").strip()
        split = split_name or str(row.get(t.split_column) or "").strip()
        problem, payload = row.get("__error__", ""), None
        if not problem:
            try:
                payload = cell_bytes(row.get(t.text_column))
            except UnicodeEncodeError:
                problem = "text holds an escaped lone surrogate, which is not text"
        problem = (problem or (f"no {t.text_column!r} value" if payload is None else "")
                   or ("empty label" if not label else "")
                   or (f"split {split!r} is not one of {SPLITS}" if split and split not in SPLITS else "")
                   or (f"text has {len(payload)} bytes, over max_input_bytes={cfg.max_input_bytes}"
                       if len(payload) > cfg.max_input_bytes else "")
                   or (f"key {key} is not unique" if key in seen else ""))
        if problem:
            source = f"{path}:{i}"
            rejects.append(Reject(duplicate_key(key, source) if key in seen else key, source, "scan", problem))
            continue
        seen.add(key)
        if not split:
            split = split_of(key, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        elif split == "train" and not has_val:  # no val rows at all: carve val from train, as for images
            split = split_of(key, cfg.seed, cfg.val_fraction)
        records.append(Record(key, f"{path}:{i}", split, classes.index(label), label, payload))
    return limit_per_split(shuffled(records, cfg.seed), cfg.limit), rejects, classes
