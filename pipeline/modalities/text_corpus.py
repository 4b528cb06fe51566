"""Corpus statistics of a text training split by a distributed Ray pass: document frequencies for the IDF table.

The text modality's ``prepare`` hook (``text.py``) runs this before anything is compressed: Ray
tasks count, per chunk of training texts, in how many texts each word occurs; the driver sums
the counters and puts the table into ``spec.tokenization``, so compression, training,
evaluation and a server score every text identically from the manifest or the checkpoint alone.
A copy goes to ``idf.json`` for people. ``training_texts`` feeds a corpus tokenizer's trainer.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

from icpc.pipeline.modalities.text_tokens import CHARS_PER_TOKEN, decode_text, load_nlp

# Fraction of a CPU each counting task reserves: two per core, the pass is short and waits on Ray.
TASK_CPUS = 0.5
TEXTS_PER_TASK = 2000   # spaCy's tokenizer does ~10k short texts/s, so a task is ~0.2 s of work plus overhead


def training_texts(payloads: Sequence[bytes], max_chars: int) -> Iterator[str]:
    """The texts that decode, cut at ``max_chars`` as the compressor cuts them (bad ones become rejects later)."""
    for payload in payloads:
        try:
            yield decode_text(payload)[:max_chars]
        except ValueError:
            continue


def count_texts(payloads: Sequence[bytes], spacy_model: str = "", max_chars: int = 64 * CHARS_PER_TOKEN
                ) -> tuple[Counter, int]:
    """(document frequency per lowercase word, texts counted).

    Texts that do not decode or are blank are skipped here (the compressor rejects them with the
    reason). Only the tokenizer runs (``nlp.make_doc``): the words are those the compressor sees.
    """
    nlp = load_nlp(spacy_model)
    df, docs = Counter(), 0
    for text in training_texts(payloads, max_chars):
        df.update({t.lower_ for t in nlp.make_doc(text) if not t.is_space})
        docs += 1
    return df, docs


def count_texts_ray(payloads: Sequence[bytes], spacy_model: str = "", max_chars: int = 64 * CHARS_PER_TOKEN,
                    texts_per_task: int = TEXTS_PER_TASK) -> tuple[Counter, int]:
    """``count_texts`` split over Ray tasks and summed in the driver (needs ``ray.init`` first)."""
    import ray

    task = ray.remote(num_cpus=TASK_CPUS)(count_texts)
    refs = [task.remote(list(payloads[i:i + texts_per_task]), spacy_model, max_chars)
            for i in range(0, len(payloads), texts_per_task)]
    df, docs = Counter(), 0
    for part_df, part_docs in ray.get(refs):
        df.update(part_df)
        docs += part_docs
    return df, docs
