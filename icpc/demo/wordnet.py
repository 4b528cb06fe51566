"""The text demo set: WordNet noun glosses labelled by lexicographer file, from Debian's ``wordnet-base``."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
GLOSSES_FILE = "glosses.jsonl"
# Lexicographer file names by number, from lexnames(5WN); data.noun uses 03..28.
LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
            "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
            "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
            "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
            "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
            "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
            "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
            "verb.stative", "verb.weather", "adj.ppl"]


def parse_data_line(line: str) -> tuple[str, str, str] | None:
    """(synset offset, lexicographer file name, gloss) of one ``data.noun`` line; None for licence lines.

    A line is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss`` (wndb(5WN)); the
    licence header lines start with two spaces.
    """
    if line.startswith("  ") or not line.strip():
        return None
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise ValueError(f"data.noun line without a gloss: {line[:60]!r}")
    fields = head.split()
    return fields[0], LEXNAMES[int(fields[1])], gloss.strip()


def read_glosses(path: str | os.PathLike = WORDNET_NOUNS) -> list[tuple[str, str, str]]:
    """Every (offset, lexname, gloss) of a WordNet data file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"WordNet not found at {path}; install it with 'apt-get install wordnet-base' "
                                f"(Debian, WordNet licence)")
    with open(path, encoding="utf-8") as f:
        return [p for p in map(parse_data_line, f) if p is not None]


def build_wordnet_glosses(output: str | os.PathLike, train: int, test: int, seed: int = 0, classes: int = 10,
                          source: str | os.PathLike = WORDNET_NOUNS) -> dict[str, int]:
    """Write ``output/glosses.jsonl`` (text, label, split, synset): the ``classes`` largest lexicographer
    files, ``train``/``test`` glosses in all as equal per class as possible, a seeded draw.

    ``train``/``test`` of 0 take 900 / 100 per class. Two builds with the same arguments write
    identical files.
    """
    by_class: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for offset, lexname, gloss in read_glosses(source):
        by_class[lexname].append((offset, gloss))
    chosen = sorted(sorted(by_class), key=lambda c: -len(by_class[c]))[:classes]
    train = train or 900 * len(chosen)
    test = test or 100 * len(chosen)
    rng = np.random.default_rng(seed)
    rows, counts = [], {"train": 0, "test": 0}
    for c_index, name in enumerate(sorted(chosen)):
        n_train = train // len(chosen) + (c_index < train % len(chosen))
        n_test = test // len(chosen) + (c_index < test % len(chosen))
        items = by_class[name]
        if n_train + n_test > len(items):
            raise ValueError(f"{name} has {len(items)} glosses, fewer than the {n_train + n_test} asked for")
        picks = rng.choice(len(items), size=n_train + n_test, replace=False)
        for j, idx in enumerate(picks):
            split = "train" if j < n_train else "test"
            offset, gloss = items[idx]
            rows.append({"synset": offset, "text": gloss, "label": name, "split": split})
            counts[split] += 1
    rows.sort(key=lambda r: r["synset"])
    Path(output).mkdir(parents=True, exist_ok=True)
    tmp = Path(output) / f".{GLOSSES_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, Path(output) / GLOSSES_FILE)
    return counts
