"""Corpus statistics of a text training split by a distributed Ray pass: document frequencies and the vocabulary.

The text modality's ``prepare`` hook (``text.py``) runs this before anything is compressed: Ray tasks count, per chunk of training texts, in how many texts each word
occurs and how often each normalised unit occurs; the driver sums the counters, builds the
WordPiece vocabulary (or takes MiniLM's) and puts both into ``spec.tokenization``, so
compression, training, evaluation and a server score and tokenize every text identically from
the manifest or the checkpoint alone. Copies go to ``vocab.txt`` and ``idf.json`` for people.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from icpc.pipeline.modalities.text_tokens import CHARS_PER_TOKEN, SPECIALS, decode_text, load_nlp, normalize

# Fraction of a CPU each counting task reserves: two per core, the pass is short and waits on Ray.
TASK_CPUS = 0.5
TEXTS_PER_TASK = 2000   # spaCy's tokenizer does ~10k short texts/s, so a task is ~0.2 s of work plus overhead


def count_texts(payloads: Sequence[bytes], spacy_model: str = "", max_chars: int = 64 * CHARS_PER_TOKEN
                ) -> tuple[Counter, Counter, int]:
    """(document frequency per lowercase word, occurrences per normalised unit, texts counted).

    Texts that do not decode or are blank are skipped here (the compressor rejects them with the
    reason). Only the tokenizer runs (``nlp.make_doc``): the words are those the compressor sees.
    """
    nlp = load_nlp(spacy_model)
    df, units, docs = Counter(), Counter(), 0
    for payload in payloads:
        try:
            text = decode_text(payload)
        except ValueError:
            continue
        words = [t for t in nlp.make_doc(text[:max_chars]) if not t.is_space]
        df.update({t.lower_ for t in words})
        units.update(u for t in words for u in normalize(t.text))
        docs += 1
    return df, units, docs


def count_texts_ray(payloads: Sequence[bytes], spacy_model: str = "", max_chars: int = 64 * CHARS_PER_TOKEN,
                    texts_per_task: int = TEXTS_PER_TASK) -> tuple[Counter, Counter, int]:
    """``count_texts`` split over Ray tasks and summed in the driver (needs ``ray.init`` first)."""
    import ray

    task = ray.remote(num_cpus=TASK_CPUS)(count_texts)
    refs = [task.remote(list(payloads[i:i + texts_per_task]), spacy_model, max_chars)
            for i in range(0, len(payloads), texts_per_task)]
    df, units, docs = Counter(), Counter(), 0
    for part_df, part_units, part_docs in ray.get(refs):
        df.update(part_df)
        units.update(part_units)
        docs += part_docs
    return df, units, docs


def build_vocab(units: Counter, vocab_size: int, min_count: int) -> list[str]:
    """A WordPiece vocabulary: specials, then every character (as a start and a ``##`` continuation,
    most frequent first, at most half the budget), then the most frequent whole units seen at least
    ``min_count`` times. An unknown word falls back to its characters, never to [UNK]."""
    chars = Counter()
    for unit, n in units.items():
        for c in unit:
            chars[c] += n
    vocab = list(SPECIALS)
    for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))[: (vocab_size - len(SPECIALS)) // 4]:
        vocab += [c, "##" + c]
    seen = set(vocab)
    for unit, n in sorted(units.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size or n < min_count:
            break
        if unit not in seen:
            vocab.append(unit)
            seen.add(unit)
    return vocab
