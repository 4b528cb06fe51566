"""The text modality: importance-based word pruning with spaCy words, IDF/POS scores, the model's tokenizer, original positions.

A text is split into words with spaCy, every word gets an importance score, and level ``i`` keeps
the ``keep[i]`` share of the words with the highest scores (never fewer than ``min_words``). The
text is tokenized once, unpruned, by the model's own tokenizer (``text.tokenizer``, a Hugging Face
fast tokenizer; ``text_tokenizer.py``); each sub-token belongs to the word its characters start
in, a level keeps the sub-tokens of its kept words and every special token ([CLS]/[SEP],
<s>/</s>), and every token keeps its index in the unpruned tokenization (DESIGN contract 2).

Scores are lexicographic: a tier first (punctuation 0 < stop / function word 1 < other 2 <
content word 3; the POS tiers need a trained pipeline, scorer ``pos``), then the word's corpus
IDF ``ln((1 + N) / (1 + df)) + 1`` from the training split. Scorer ``attention`` keeps
punctuation first and ranks the rest by a teacher's [CLS] attention (``text_teacher.py``).
Ties are broken by position (the later word goes first), so pruning is deterministic.

Level 0 is exactly the tokenizer's own output for the text (``AutoTokenizer(text)["input_ids"]``,
tests/pipeline/modalities/test_text_tokenizer.py): the ids are never re-tokenized word by word,
so a BPE word keeps the id its leading space gives it in the full text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from icpc import storage
from icpc.contract import Level, Spec
from icpc.pipeline.modalities.base import Compressed, Modality
from icpc.pipeline.modalities.text_tables import scan_text_tables
from icpc.pipeline.modalities import text_tokenizer
from icpc.pipeline.modalities.text_tokens import (CHARS_PER_TOKEN, assemble, content_hash, decode_text, idf,
                                                  keep_count, kept_words, load_nlp, truncate_tokens, word_owners,
                                                  word_tier)

SCORERS = ("idf", "pos", "attention")
TIER_GAP = 1000.0       # score = tier * TIER_GAP + idf; IDF stays far below it (ln(N) < 50 for any corpus)
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
    tokenizer: str = "corpus"         # the model's tokenizer: minilm (all-MiniLM-L6-v2's), a local Hugging Face tokenizer
                                      # folder (e.g. the hf: model's), or corpus (a WordPiece trained on the training split)
    vocab_size: int = 8000            # tokenizer=corpus: vocabulary entries at most (specials and characters included)
    min_count: int = 2                # words in fewer training texts stay out of the IDF table (and sub-words seen
                                      # fewer times out of a corpus vocabulary)
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
        if self.tokenizer not in (text_tokenizer.CORPUS, text_tokenizer.MINILM) and not os.path.isdir(self.tokenizer):
            errors.append(f"text.tokenizer={self.tokenizer!r}: choose corpus, minilm or a local folder holding a Hugging "
                          f"Face tokenizer (tokenizer.save_pretrained(FOLDER), or the folder of an hf: model)")
        if self.scorer not in SCORERS:
            errors.append(f"text.scorer={self.scorer!r}: choose one of {SCORERS}")
        if self.scorer == "pos" and not self.spacy_model:
            errors.append("text.scorer=pos needs a trained spaCy pipeline with a tagger or morphologizer: "
                          "set text.spacy_model=NAME_OR_PATH (e.g. en_core_web_sm)")
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
    """What the compressor loads once per process: spaCy pipeline, the model's tokenizer, IDF table."""

    nlp: Any
    tokenizer: Any         # tokenizers.Tokenizer
    df: dict[str, int]
    n_docs: int
    tagged: bool           # the pipeline sets part-of-speech tags (scorer ``pos``)


_RESOURCES: dict[tuple, tuple[dict, Resources]] = {}


def resources(tok: dict[str, Any]) -> Resources:
    """Resources of a spec's tokenization, built once per spec object and checked against its hashes.

    The tokenizer and IDF table live in the spec (manifest, checkpoint), so there is no path to
    go stale; the sha256 checks catch an edited manifest.
    """
    key = (id(tok), tok.get("tokenizer_sha256"), tok["df_sha256"], tok["spacy_model"], tok["scorer"])
    if key not in _RESOURCES:
        tokenizer = text_tokenizer.from_spec(tok)
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
        _RESOURCES[key] = (tok, Resources(nlp, tokenizer, dict(tok["df"]), int(tok["idf_docs"]), tagged))
    return _RESOURCES[key][1]



# ----------------------------------------------------------------------------- decode, compress, spec


@dataclass
class Words:
    """A decoded text: its unpruned tokenization (cut to ``max_len``), each token's word, the words' scores."""

    ids: np.ndarray        # int64 (T,) token ids, special tokens included
    owner: np.ndarray      # int64 (T,) word index of each token, -1 for special tokens
    scores: list[float]    # one per word (after truncation)
    truncated: bool


def decode(payload: bytes, spec: Spec) -> Words:
    """UTF-8 text -> words, scores and the model tokenizer's unpruned tokenization: spaCy, the scorer and
    the tokenizer run once per text.

    Invalid UTF-8 and blank texts raise ValueError (they become rejects).
    """
    tok = spec.tokenization
    res = resources(tok)
    text = decode_text(payload)
    cut = len(text) > tok["max_len"] * CHARS_PER_TOKEN
    text = text[: tok["max_len"] * CHARS_PER_TOKEN]
    words = [t for t in res.nlp(text) if not t.is_space]
    ids, starts, special = text_tokenizer.encode(res.tokenizer, text)
    owner = word_owners(starts, special, np.asarray([t.idx + len(t.text) for t in words], dtype=np.int64))
    ids, owner, truncated = truncate_tokens(ids, owner, tok["max_len"])
    n = int(owner.max()) + 1
    if tok["scorer"] == "attention":  # punctuation still first; among the rest, the teacher's attention decides
        from icpc.pipeline.modalities.text_teacher import cls_attention

        attention = cls_attention(text, [(t.idx, t.idx + len(t.text)) for t in words])
        scores = [(word_tier(t.is_punct, t.is_stop) > 0) * TIER_GAP + attention[w] for w, t in enumerate(words[:n])]
    else:
        pos = tok["scorer"] == "pos"
        scores = [word_tier(t.is_punct, t.is_stop, t.pos_ if pos else "") * TIER_GAP
                  + idf(res.df.get(t.lower_, 0), res.n_docs) for t in words[:n]]
    return Words(ids, owner, scores, bool(truncated or cut))


def compress(words: Words, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    """Decoded text -> token ids int32 (N_i,) and original positions int32 (N_i,) per keep ratio.

    ``levels`` computes only those levels, in that order (the server's cascade); None = all.
    ``meta``: ``words`` (after truncation) and ``truncated`` (the text was longer than ``max_len``
    tokens and lost its tail before pruning).
    """
    tok = spec.tokenization
    n = len(words.scores)
    out = []
    for i in range(len(spec.ladder)) if levels is None else levels:
        kept = kept_words(words.scores, keep_count(n, spec.ladder[i].params["keep"], tok["min_words"]))
        out.append(assemble(words.ids, words.owner, kept))
    return Compressed(out, {"words": n, "truncated": words.truncated})


def build_spec(cfg: TextConfig, tokenizer=None, df: dict[str, int] | None = None, n_docs: int = 0) -> Spec:
    """The text ladder (one level per keep ratio, up to ``max_len`` tokens) and its tokenization.

    ``tokenizer`` (a ``tokenizers.Tokenizer``) and ``df``/``n_docs`` come from the corpus pass over
    the training split (``prepare``); for ``minilm`` or a folder, None loads ``cfg.tokenizer``.
    The tokenizer goes into the spec whole (its canonical JSON) with its sha256.
    """
    if tokenizer is None:
        if cfg.tokenizer == text_tokenizer.CORPUS:
            raise ValueError("text.tokenizer=corpus is trained on the training split; run 'icpc compress'")
        tokenizer = text_tokenizer.load_tokenizer(cfg.tokenizer)
    df = dict(sorted((df or {}).items()))
    tokenization = {
        "token_dtype": "int32", **text_tokenizer.describe(tokenizer, cfg.tokenizer),
        "max_len": cfg.max_len, "min_words": cfg.min_words, "scorer": cfg.scorer, "spacy_model": cfg.spacy_model,
        "idf_docs": n_docs, "min_count": cfg.min_count, "df_sha256": content_hash(df), "df": df,
    }
    ladder = tuple(Level({"keep": k}, (), cfg.max_len) for k in cfg.keep)
    return Spec("text", (cfg.max_len,), ladder, tokenization)


def prepare(cfg: TextConfig, train: list, out_dir: str) -> Spec:
    """The modality's prepare hook: a Ray pass over the training texts -> the spec with tokenizer and IDF.

    A corpus tokenizer is trained here (Hugging Face ``tokenizers``, in the driver: ~1 s for 50k
    short texts). Copies go to ``tokenizer/`` (an ``AutoTokenizer`` folder) and ``idf.json`` in ``out_dir``.
    """
    from icpc.pipeline.modalities.text_corpus import count_texts_ray, training_texts

    if not train:
        raise ValueError("the text modality builds its IDF table (and a corpus tokenizer) from the training split, "
                         "which is empty; give the input a split column with train rows or lower test_fraction")
    max_chars = cfg.max_len * CHARS_PER_TOKEN
    payloads = [r.payload or b"" for r in train]
    df_all, docs = count_texts_ray(payloads, cfg.spacy_model, max_chars)
    df = {w: n for w, n in df_all.items() if n >= cfg.min_count}
    tokenizer = None
    if cfg.tokenizer == text_tokenizer.CORPUS:
        tokenizer = text_tokenizer.train_corpus_tokenizer(training_texts(payloads, max_chars), cfg.vocab_size,
                                                          cfg.min_count)
    spec = build_spec(cfg, tokenizer, df, docs)
    tok = spec.tokenization
    text_tokenizer.save_folder(text_tokenizer.from_spec(tok), storage.join(out_dir, text_tokenizer.FOLDER))
    storage.write_text(storage.join(out_dir, IDF_FILE), json.dumps({
        "docs": docs, "min_count": cfg.min_count, "df_sha256": tok["df_sha256"],
        "idf": {w: round(idf(n, docs), 6) for w, n in tok["df"].items()}, "df": tok["df"]},
        ensure_ascii=False, indent=0))
    print(f"text corpus pass: {docs} training texts, {len(df_all)} distinct words ({len(df)} with df >= "
          f"{cfg.min_count} in the IDF table), tokenizer {cfg.tokenizer} of {tok['vocab_size']} entries "
          f"(sha256 {tok['tokenizer_sha256'][:12]})", flush=True)
    return spec


def warm_up(spec: Spec) -> None:
    """Load this process's spaCy pipeline and tokenizer, and with ``scorer=attention`` the teacher."""
    tok = spec.tokenization
    resources(tok)
    if tok["scorer"] == "attention":
        from icpc.pipeline.modalities.text_teacher import warm_up_teacher

        warm_up_teacher()


MODALITY = Modality(
    name="text", config_type=TextConfig, build_spec=build_spec, scan=scan_text_tables, decode=decode,
    compress=compress, media_types=("text/plain",), json_field="text", embedding="vocab", shared_positions=False,
    prepare=prepare, needs_actors=lambda cfg: cfg.scorer == "attention", warm_up=warm_up,
)
