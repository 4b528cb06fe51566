"""Text input reader: CSV, JSONL or Parquet rows (configurable text/label/split columns) into a listing with payloads.

``--input`` is one table file, or a folder holding ``train.*``/``val.*``/``test.*`` tables (any of
the three formats), as a path or a URL. A text is not a file of its own, so each row of the
listing carries the raw bytes of its text cell as ``payload`` and ``FILE:record N`` as its source,
N counting from 1: the CSV's Nth data row (the header is not a record; a quoted cell may span
lines), the JSONL's line N, the Parquet's row N. Cells are kept as raw bytes (invalid UTF-8
included) so that the compressor, not the reader, decides what is unreadable; rows without a
label, with an unknown split or with an oversized text become rejects at stage ``scan``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import IO, Any, Iterator

import pyarrow as pa

from icpc import storage
from icpc.contract import SPLITS, sanitize_key, split_of
from icpc.pipeline.scan import ListingBuilder, Reject, duplicate_key, order_listing

TABLE_EXTENSIONS = (".csv", ".jsonl", ".parquet")


def _suffix(location: str) -> str:
    name = storage.basename(location)
    return "." + name.rsplit(".", 1)[1].lower() if "." in name else ""


def _stem(location: str) -> str:
    return storage.basename(location).rsplit(".", 1)[0]


def _text(f: IO[bytes]) -> IO[str]:
    # surrogateescape keeps undecodable bytes, and .encode(..., "surrogateescape") gives them back
    return io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")


def read_rows(path: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number N, {column: value}) of a table (a path or URL); text cells as raw bytes, other cells as str.

    N counts from 1: CSV data rows (the header excluded), JSONL lines, Parquet rows. A JSONL line
    that is not a JSON object yields ``{"__error__": reason}`` (a reject, not a crash).
    """
    suffix = _suffix(path)
    if suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        with storage.open_read(path) as raw, _text(raw) as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns[:2] if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: no column(s) {missing} (found {reader.fieldnames}); set "
                                 f"text.text_column / text.label_column")
            for n, row in enumerate(reader, start=1):
                yield n, {c: row.get(c) for c in columns}
    elif suffix == ".jsonl":
        with storage.open_read(path) as raw, _text(raw) as f:
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

        with storage.arrow_file(path) as f:
            table = pq.read_table(f)
        missing = [c for c in columns[:2] if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (found {table.column_names}); set "
                             f"text.text_column / text.label_column")
        text = table.column(columns[0])
        if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
            text = text.cast(pa.large_binary())  # raw bytes, no UTF-8 check here (the compressor's job)
        cols = {c: table.column(c).to_pylist() for c in columns[1:] if c in table.column_names}
        for i, value in enumerate(text.to_pylist()):
            yield i + 1, {columns[0]: value, **{c: v[i] for c, v in cols.items()}}
    else:
        raise ValueError(f"{path}: unsupported table format {suffix!r}; use one of {TABLE_EXTENSIONS}")


def cell_bytes(value: Any) -> bytes | None:
    """Raw bytes of a text cell (None when the cell is missing)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


def table_files(root: str) -> dict[str | None, str]:
    """{split: table} of a folder (``train.csv``, ``test.jsonl``, ...) or {None: file} of one table."""
    if storage.is_file(root):
        return {None: root}
    if not storage.is_dir(root):
        raise FileNotFoundError(f"input {root!r} does not exist; pass a CSV/JSONL/Parquet file or a "
                                f"folder with train/val/test tables")
    names = storage.list_dir(root)
    found = {s: storage.join(root, n) for s in SPLITS for n in names
             if _stem(n) == s and _suffix(n) in TABLE_EXTENSIONS}
    if "train" not in found and "test" not in found:
        raise ValueError(f"input folder {root!r} has no train.* or test.* table ({TABLE_EXTENSIONS})")
    return found


def scan_text_tables(cfg: Any) -> tuple[pa.Table, list[Reject], list[str]]:
    """Listing of every row of the input table(s) (``cfg``: CompressConfig; columns from ``cfg.text``)."""
    t = cfg.text
    columns = (t.text_column, t.label_column, t.split_column)
    rows: list[tuple[str | None, str, int, dict[str, Any]]] = []
    for split_name, path in table_files(storage.absolute(cfg.input)).items():
        rows += [(split_name, path, i, row) for i, row in read_rows(path, columns)]
    classes = sorted({str(r[t.label_column]).strip() for *_, r in rows
                      if r.get(t.label_column) is not None and str(r[t.label_column]).strip()})
    has_val = any(s == "val" for s, *_ in rows) or any(str(r.get(t.split_column) or "").strip() == "val"
                                                      for *_, r in rows)
    found, rejects, seen = ListingBuilder(), [], set()
    for split_name, path, i, row in rows:
        key = sanitize_key(f"{_stem(path)}-{i}")
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
        source = f"{path}:record {i}"
        if problem:
            rejects.append(Reject(duplicate_key(key, source) if key in seen else key, source, "scan", problem))
            continue
        seen.add(key)
        if not split:
            split = split_of(key, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        elif split == "train" and not has_val:  # no val rows at all: carve val from train, as for images
            split = split_of(key, cfg.seed, cfg.val_fraction)
        found.add(key, source, split, classes.index(label), label, len(payload), payload)
    return order_listing(found.table(), cfg.seed, cfg.limit), rejects, classes
