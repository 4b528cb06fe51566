"""Teacher-attention word scores: all-MiniLM-L6-v2's last-layer attention from [CLS], the model loaded once per process.

With ``text.scorer=attention`` the compress job runs its batches in Ray actors (see
``pipeline/job.py``), so each actor loads the teacher once and keeps it for every batch it
compresses; a server replica does the same. A word's score is the attention mass that [CLS]
puts on its sub-word tokens in the last layer, averaged over heads (the teacher sees the
truncated, unpruned text in its own WordPiece vocabulary, whatever vocabulary the data uses).
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from icpc.pipeline.modalities.text_tokens import minilm_path, minilm_vocab, normalize, wordpiece

TEACHER_MAX_TOKENS = 512   # MiniLM's position table


@functools.lru_cache(maxsize=1)
def teacher():
    """(BertModel with eager attention so that it returns attention maps, token ids of its vocabulary)."""
    import torch
    from transformers import BertModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)   # a Ray actor holds at most one CPU (the compress job's task_cpus)
    model = BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False, attn_implementation="eager")
    return model.eval(), {t: i for i, t in enumerate(minilm_vocab())}


def cls_attention(words: Sequence[str]) -> np.ndarray:
    """float64 ``(len(words),)``: last-layer, head-averaged attention from [CLS] summed over each word's pieces."""
    import torch

    model, ids = teacher()
    unk = ids["[UNK]"]
    pieces = [[i for u in normalize(w) for i in wordpiece(u, ids, unk)] or [unk] for w in words]
    owner = [w for w, p in enumerate(pieces) for _ in p][: TEACHER_MAX_TOKENS - 2]
    flat = [i for p in pieces for i in p][: TEACHER_MAX_TOKENS - 2]
    input_ids = torch.tensor([[ids["[CLS]"], *flat, ids["[SEP]"]]])
    with torch.no_grad():
        att = model(input_ids=input_ids, output_attentions=True).attentions[-1][0].mean(0)[0]  # (L,) from [CLS]
    scores = np.zeros(len(words))
    np.add.at(scores, np.asarray(owner, dtype=np.int64), att[1:1 + len(flat)].double().numpy())
    return scores
