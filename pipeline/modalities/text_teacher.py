"""Teacher-attention word scores: all-MiniLM-L6-v2's last-layer attention from [CLS], the model loaded once per process.

With ``text.scorer=attention`` the compress job runs its batches in Ray actors (see
``pipeline/job.py``), so each actor loads the teacher once and keeps it for every batch it
compresses; a server replica does the same. A word's score is the attention mass that [CLS]
puts on its sub-word tokens in the last layer, averaged over heads. The teacher reads the text
with its own tokenizer, whatever tokenizer the data uses; its sub-tokens are mapped to the
words by character offsets, as the compressor maps the data's.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from icpc.pipeline.modalities.text_tokenizer import MINILM, encode, load_tokenizer, minilm_path
from icpc.pipeline.modalities.text_tokens import word_owners

TEACHER_MAX_TOKENS = 512   # MiniLM's position table


@functools.lru_cache(maxsize=1)
def teacher():
    """BertModel with eager attention, so that it returns attention maps."""
    import torch
    from transformers import BertModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)   # a Ray actor holds at most one CPU (the compress job's task_cpus)
    return BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False, attn_implementation="eager").eval()


def warm_up_teacher() -> None:
    """Load the teacher and its tokenizer now (both cached for the process)."""
    load_tokenizer(MINILM)
    teacher()


def cls_attention(text: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """float64 ``(len(spans),)``: last-layer, head-averaged attention from [CLS] summed over each word's sub-tokens.

    ``spans``: the words' (start, end) character offsets in ``text``; the text is cut to MiniLM's
    512 tokens (its [SEP] kept).
    """
    import torch

    ids, starts, special = encode(load_tokenizer(MINILM), text)
    if len(ids) > TEACHER_MAX_TOKENS:
        ids, starts, special = (np.r_[a[: TEACHER_MAX_TOKENS - 1], a[-1:]] for a in (ids, starts, special))
    owner = word_owners(starts, special, np.asarray([e for _, e in spans], dtype=np.int64))
    with torch.no_grad():
        att = teacher()(input_ids=torch.as_tensor(ids)[None], output_attentions=True).attentions[-1][0].mean(0)[0]
    words = owner >= 0
    scores = np.zeros(len(spans))
    np.add.at(scores, owner[words], att.double().numpy()[words])
    return scores
