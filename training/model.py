"""Optimisation helpers every model plugin trains with: the LR schedule and AdamW's parameter groups.

The built-in classifier moved to ``icpc.models.transformer`` (the ``transformer`` plugin).
"""

from __future__ import annotations

import math

from torch import nn

from icpc.models.transformer import TokenClassifier  # noqa: F401  (its old home; kept for existing imports)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and position tables.

    Position tables are ``pos_table`` and whatever the module lists in ``no_weight_decay()`` (timm's
    convention: ``pos_embed``, ``cls_token``, ...).
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "pos_table" or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
