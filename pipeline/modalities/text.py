"""The text modality: importance-based word pruning with spaCy words, IDF/POS scores, WordPiece tokens, original positions.

A text is split into words with spaCy, every word gets an importance score, and level ``i`` keeps
the ``keep[i]`` share of the words with the highest scores (never fewer than ``min_words``). The
kept words are written as the WordPiece tokens they had in the unpruned tokenization, between
[CLS] and [SEP], and every token keeps its index in that unpruned sequence (DESIGN contract 2).

Scores are lexicographic: a tier first (punctuation 0 < stop / function word 1 < other 2 <
content word 3; the POS tiers need a trained pipeline, scorer ``pos``), then the word's corpus
IDF ``ln((1 + N) / (1 + df)) + 1`` from the training split. Scorer ``attention`` keeps
punctuation first and ranks the rest by a teacher's [CLS] attention (``text_teacher.py``).
Ties are broken by position (the later word goes first), so pruning is deterministic.

Words follow spaCy's boundaries, so a contraction splits as spaCy splits it ("does" + "n't"),
not as BERT's basic tokenizer would ("doesn" + "'" + "t"); elsewhere the WordPiece ids equal
Hugging Face's BertTokenizer on the MiniLM vocabulary (tests/training/test_minilm.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from icpc import storage
from icpc.contract import Level, Spec
from icpc.pipeline.modalities.base import Compressed, Modality
from icpc.pipeline.modalities.text_tables import scan_text_tables
from icpc.pipeline.modalities.text_tokens import (CHARS_PER_TOKEN, assemble, content_hash, decode_text, idf,
                                                  keep_count, kept_words, load_nlp, minilm_vocab, normalize,
                                                  truncate_words, word_tier, wordpiece)

SCORERS = ("idf", "pos", "attention")
VOCABS = ("corpus", "minilm")
TIER_GAP = 1000.0       # score = tier * TIER_GAP + idf; IDF stays far below it (ln(N) < 50 for any corpus)
VOCAB_FILE = "vocab.txt"
IDF_FILE = "idf.json"


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



# ----------------------------------------------------------------------------- per-process resources


@dataclass
class Resources:
    """What the compressor loads once per process: spaCy pipeline, WordPiece ids, IDF table."""

    nlp: Any
    ids: dict[str, int]
    df: dict[str, int]
    n_docs: int
    tagged: bool           # the pipeline sets part-of-speech tags (scorer ``pos``)


_RESOURCES: dict[tuple, tuple[dict, Resources]] = {}


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



# ----------------------------------------------------------------------------- decode, compress, spec



@dataclass
class Words:
    """A decoded text: its words' WordPiece ids (after truncation to ``max_len``) and importance scores."""

    pieces: list[list[int]]
    scores: list[float]
    truncated: bool


def decode(payload: bytes, spec: Spec) -> Words:
    """UTF-8 text -> words, WordPiece pieces and scores: spaCy and the scorer run once per text.

    Invalid UTF-8 and blank texts raise ValueError (they become rejects).
    """
    tok = spec.tokenization
    res = resources(tok)
    text = decode_text(payload)
    cut = len(text) > tok["max_len"] * CHARS_PER_TOKEN
    keys, tiers, pieces = analyse(res.nlp(text[: tok["max_len"] * CHARS_PER_TOKEN]), res, tok["scorer"] == "pos")
    pieces, truncated = truncate_words(pieces, tok["max_len"])
    n = len(pieces)
    if tok["scorer"] == "attention":  # punctuation still first; among the rest, the teacher's attention decides
        from icpc.pipeline.modalities.text_teacher import cls_attention

        attention = cls_attention(keys[:n])
        scores = [(tiers[w] > 0) * TIER_GAP + attention[w] for w in range(n)]
    else:
        scores = [tiers[w] * TIER_GAP + idf(res.df.get(keys[w], 0), res.n_docs) for w in range(n)]
    return Words(pieces, scores, bool(truncated or cut))


def compress(words: Words, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    """Decoded text -> token ids int32 (N_i,) and original positions int32 (N_i,) per keep ratio.

    ``levels`` computes only those levels, in that order (the server's cascade); None = all.
    ``meta``: ``words`` (after truncation) and ``truncated`` (the text was longer than ``max_len``
    tokens and lost its tail before pruning).
    """
    tok = spec.tokenization
    n = len(words.pieces)
    out = []
    for i in range(len(spec.ladder)) if levels is None else levels:
        kept = kept_words(words.scores, keep_count(n, spec.ladder[i].params["keep"], tok["min_words"]))
        out.append(assemble(words.pieces, kept, tok["cls_id"], tok["sep_id"]))
    return Compressed(out, {"words": n, "truncated": words.truncated})


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
        "token_dtype": "int32", "tokenizer": "wordpiece", "vocab_source": cfg.vocab, "vocab_size": len(words),
        "vocab_sha256": content_hash(words), "vocab": words if cfg.vocab == "corpus" else [],
        "pad_id": ids["[PAD]"], "unk_id": ids["[UNK]"], "cls_id": ids["[CLS]"], "sep_id": ids["[SEP]"],
        "max_len": cfg.max_len, "min_words": cfg.min_words, "scorer": cfg.scorer, "spacy_model": cfg.spacy_model,
        "idf_docs": n_docs, "min_count": cfg.min_count, "df_sha256": content_hash(df), "df": df,
    }
    if tokenization["pad_id"] != 0:
        raise ValueError(f"vocabulary {cfg.vocab!r} pads with id {tokenization['pad_id']}; the trainer pads with 0")
    ladder = tuple(Level({"keep": k}, (), cfg.max_len) for k in cfg.keep)
    return Spec("text", (cfg.max_len,), ladder, tokenization)


def prepare(cfg: TextConfig, train: list, out_dir: str) -> Spec:
    """The modality's prepare hook: a Ray pass over the training texts -> the spec with vocabulary and IDF.

    Copies of both go to ``vocab.txt`` and ``idf.json`` in ``out_dir`` for people.
    """
    from icpc.pipeline.modalities.text_corpus import build_vocab, count_texts_ray

    if not train:
        raise ValueError("the text modality builds its IDF table (and vocabulary) from the training split, "
                         "which is empty; give the input a split column with train rows or lower test_fraction")
    max_chars = cfg.max_len * CHARS_PER_TOKEN
    df_all, units, docs = count_texts_ray([r.payload or b"" for r in train], cfg.spacy_model, max_chars)
    df = {w: n for w, n in df_all.items() if n >= cfg.min_count}
    vocab = build_vocab(units, cfg.vocab_size, cfg.min_count) if cfg.vocab == "corpus" else None
    spec = build_spec(cfg, vocab, df, docs)
    tok = spec.tokenization
    storage.write_text(storage.join(out_dir, VOCAB_FILE), "\n".join(tok["vocab"] or minilm_vocab()) + "\n")
    storage.write_text(storage.join(out_dir, IDF_FILE), json.dumps({
        "docs": docs, "min_count": cfg.min_count, "df_sha256": tok["df_sha256"],
        "idf": {w: round(idf(n, docs), 6) for w, n in tok["df"].items()}, "df": tok["df"]},
        ensure_ascii=False, indent=0))
    print(f"text corpus pass: {docs} training texts, {len(df_all)} distinct words ({len(df)} with df >= "
          f"{cfg.min_count} in the IDF table), vocabulary {cfg.vocab} of {tok['vocab_size']} entries", flush=True)
    return spec


MODALITY = Modality(
    name="text", config_type=TextConfig, build_spec=build_spec, scan=scan_text_tables, decode=decode,
    compress=compress, media_types=("text/plain",), json_field="text", embedding="vocab", shared_positions=False,
    prepare=prepare, needs_actors=lambda cfg: cfg.scorer == "attention",
)
