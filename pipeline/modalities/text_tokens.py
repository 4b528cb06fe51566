"""The word side of the text modality: importance tiers, IDF, pruning arithmetic, sub-token ownership, spaCy.

Pure functions plus a cached spaCy loader; the text plugin (``text.py``), its corpus pass
(``text_corpus.py``) and its teacher (``text_teacher.py``) build on this module. The sub-word
tokenizer itself is the model's (``text_tokenizer.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any, Sequence

import numpy as np

CHARS_PER_TOKEN = 64    # texts are cut at max_len * this many characters before spaCy sees them
# Universal POS tag -> tier when a trained pipeline tags the words (the ``pos`` scorer).
POS_TIERS = {"PUNCT": 0, "SYM": 0, "SPACE": 0, "X": 1,
             "DET": 1, "ADP": 1, "CCONJ": 1, "SCONJ": 1, "PART": 1, "AUX": 1, "PRON": 1, "INTJ": 1,
             "ADV": 2,
             "NOUN": 3, "PROPN": 3, "VERB": 3, "ADJ": 3, "NUM": 3}



# ----------------------------------------------------------------------------- pure functions


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


def word_owners(token_starts: np.ndarray, special: np.ndarray, word_ends: np.ndarray) -> np.ndarray:
    """int64 ``(T,)``: the word each sub-token belongs to, -1 for special tokens.

    A token belongs to the first word that ends after the token starts (offsets in characters), so
    a token that starts in the whitespace before a word (byte-level BPE's space tokens) joins that
    word, and one that runs past a word boundary belongs to the word it starts in.
    """
    owner = np.minimum(np.searchsorted(word_ends, token_starts, side="right"), max(len(word_ends) - 1, 0))
    return np.where(special, -1, owner).astype(np.int64)


def truncate_tokens(ids: np.ndarray, owner: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The unpruned tokenization cut to ``max_len`` tokens at a word boundary, special tokens kept.

    ``ids``/``owner`` as from ``encode``/``word_owners``; the leading and trailing special tokens
    (``[CLS]``/``[SEP]``, ``<s>``/``</s>``) stay, the content between loses its last whole words.
    A first word longer than the room is itself cut, so a text never becomes empty.
    Returns (ids, owner, whether anything was cut).
    """
    content = np.flatnonzero(owner >= 0)
    if len(content) == 0:
        raise ValueError("the tokenizer produced no tokens for this text")
    head, tail = content[0], content[-1] + 1
    room = max_len - head - (len(ids) - tail)
    if room < 1:
        raise ValueError(f"max_len={max_len} leaves no room for a token beside the {len(ids) - len(content)} special ones")
    if tail - head <= room:
        return ids, owner, False
    cut = head + room
    word_start = head + int(np.searchsorted(owner[head:tail], owner[cut], side="left"))
    keep = np.r_[0:head, head:(word_start if word_start > head else cut), tail:len(ids)]
    return ids[keep], owner[keep], True


def assemble(ids: np.ndarray, owner: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and original positions of the kept words and every special token.

    ``ids``/``owner``: the (truncated) unpruned tokenization; ``kept``: word indices. A kept
    token's position is its index in that tokenization. Returns (int32 (N,), int32 (N,)).
    """
    positions = np.flatnonzero((owner < 0) | np.isin(owner, kept))
    return ids[positions].astype(np.int32), positions.astype(np.int32)


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


def decode_text(payload: bytes) -> str:
    """UTF-8 text of one input cell; invalid UTF-8 and blank text are errors (they become rejects)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text is not valid UTF-8 (byte {exc.start}: {payload[exc.start:exc.start + 4]!r})") from None
    if not text.strip():
        raise ValueError("text is empty or whitespace only")
    return text

