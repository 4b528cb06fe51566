"""Text inputs: CSV, JSONL and Parquet rows into records, bad rows into rejects; the WordNet gloss builder."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icpc.config import finalize
from icpc.pipeline.config import CompressConfig
from icpc.demo.wordnet import LEXNAMES, build_wordnet_glosses, parse_data_line
from icpc.pipeline.modalities.text_tables import scan_text_tables as scan_listing
from icpc.pipeline.scan import RecordView

ROWS = [  # (text bytes, label, split)
    (b"a domesticated carnivorous mammal", "animal", "train"),
    (b"caf\xe9 served hot", "food", "train"),     # invalid UTF-8: kept as bytes, the compressor rejects it
    (b"", "food", "train"),                      # empty text: likewise
    (b"a tall perennial woody plant", "plant", "test"),
    (b"a hollow cylinder", "", "train"),           # no label: rejected at scan
    (b"some text", "plant", "holdout"),            # bad split: rejected at scan
]


def scan_text_tables(cfg):
    """The scanner's listing as Record objects (key, source ``FILE:record N``, payload, ...)."""
    listing, rejects, classes = scan_listing(cfg)
    return list(RecordView(listing)), rejects, classes


def _cfg(path: Path, **text) -> CompressConfig:
    return finalize(CompressConfig(modality="text", input=str(path), output="unused", val_fraction=0.0),
                    [f"text.{k}={v}" for k, v in text.items()])


def _check(records, rejects, classes, path):
    assert classes == ["animal", "food", "plant"]
    by_row = {r.source.rsplit(":", 1)[1]: r for r in records}
    assert sorted(r.payload for r in records) == sorted(t for t, *_ in ROWS[:4])  # raw bytes, unchanged
    assert {r.split for r in records} == {"train", "test"}
    assert all(r.source.startswith(f"{path}:") for r in records + rejects)
    assert len(by_row) == 4 and len({r.key for r in records + rejects}) == 6
    reasons = sorted(r.error for r in rejects)
    assert [r.stage for r in rejects] == ["scan", "scan"]
    assert reasons[0] == "empty label" and reasons[1].startswith("split 'holdout' is not one of")


def test_csv_rows_keep_raw_bytes(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"body,category,split\n" + b"".join(b'"%s",%s,%s\n' % (t, l.encode(), s.encode())
                                                         for t, l, s in ROWS))
    _check(*scan_text_tables(_cfg(path, text_column="body", label_column="category")), path)


def test_jsonl_rows_keep_raw_bytes_and_reject_broken_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [b'{"text": "%s", "label": "%s", "split": "%s"}' % (t, l.encode(), s.encode()) for t, l, s in ROWS]
    path.write_bytes(b"\n".join(lines + [b"{not json", b"[1, 2]"]) + b"\n")
    records, rejects, classes = scan_text_tables(_cfg(path))
    broken = [r for r in rejects if "JSON" in r.error]
    assert [r.source for r in broken] == [f"{path}:record 7", f"{path}:record 8"]
    _check(records, [r for r in rejects if r not in broken], classes, path)


def test_parquet_binary_and_string_columns(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": pa.array([t for t, *_ in ROWS], pa.binary()),
                             "label": [l for _, l, _ in ROWS], "split": [s for *_, s in ROWS]}), path)
    _check(*scan_text_tables(_cfg(path)), path)
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"text": ["one text", "two texts"], "label": ["a", "b"]}), strings)
    records, rejects, _ = scan_text_tables(_cfg(strings))
    assert sorted(r.payload for r in records) == [b"one text", b"two texts"] and not rejects


def test_folder_of_split_tables_and_clear_errors(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "x y", "label": "a"}\n{"text": "z", "label": "b"}\n')
    (tmp_path / "test.csv").write_text("text,label\nw v,a\n")
    records, rejects, classes = scan_text_tables(_cfg(tmp_path))
    assert classes == ["a", "b"] and not rejects
    assert sorted(r.split for r in records) == ["test", "train", "train"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['body'\]"):
        scan_text_tables(_cfg(tmp_path / "test.csv", text_column="body"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_text_tables(_cfg(tmp_path / "missing.csv"))


def test_wordnet_line_parsing_and_lexnames():
    line = ("02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a member of the genus Canis; "
            '"the dog barked all night"  \n')
    assert parse_data_line(line) == ("02084071", "noun.animal", 'a member of the genus Canis; "the dog barked all night"')
    assert parse_data_line("  1 This software and database is being provided  \n") is None
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if man.exists():  # the table in lexnames(5WN), shipped by wordnet-base
        text = gzip.open(man, "rt").read()
        found = dict(re.findall(r"^(\d\d)\s+(\w+\.\w+)", text, flags=re.M))
        assert found and all(LEXNAMES[int(n)] == name for n, name in found.items())


def test_wordnet_glosses_are_balanced_and_reproducible(tmp_path):
    counts = build_wordnet_glosses(tmp_path / "a", 40, 20, seed=1, classes=4)
    build_wordnet_glosses(tmp_path / "b", 40, 20, seed=1, classes=4)
    assert counts == {"train": 40, "test": 20}
    rows = [json.loads(line) for line in (tmp_path / "a" / "glosses.jsonl").read_text().splitlines()]
    assert (tmp_path / "a" / "glosses.jsonl").read_bytes() == (tmp_path / "b" / "glosses.jsonl").read_bytes()
    per = {}
    for r in rows:
        per[(r["label"], r["split"])] = per.get((r["label"], r["split"]), 0) + 1
    # the four largest noun files, 10 train + 5 test each
    assert sorted({lab for lab, _ in per}) == ["noun.animal", "noun.artifact", "noun.person", "noun.plant"]
    assert set(per.values()) == {10, 5} and len(per) == 8
    assert len({r["synset"] for r in rows}) == 60 and all(r["text"] for r in rows)


def test_a_csv_source_names_the_record_not_the_line_it_ends_on(tmp_path):
    """A quoted cell may span lines: ``FILE:record N`` counts records (the header is not one), so N finds it."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b'text,label\n"first line\nsecond line\nthird",a\nshort,b\n')
    records, rejects, _ = scan_text_tables(_cfg(path))
    assert not rejects
    by_text = {r.payload: r.source for r in records}
    assert by_text == {b"first line\nsecond line\nthird": f"{path}:record 1", b"short": f"{path}:record 2"}
