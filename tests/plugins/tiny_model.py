"""A user's model in one module (no ICPC file names it): tests find it as ``tests.plugins.tiny_model:build``
and through an ``icpc.models`` entry point of a throwaway distribution."""

from __future__ import annotations

import torch
from torch import nn


class TinyPooled(nn.Module):
    """Linear token embedding + its own position table indexed by the stored positions, masked mean, head."""

    def __init__(self, token_dim: int, cells: int, classes: int, width: int):
        super().__init__()
        self.embed = nn.Linear(token_dim, width)
        self.pos = nn.Embedding(cells, width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens, positions, level=0, padding_mask=None):
        x = self.embed(tokens.float() / 255) + self.pos(positions.long())
        keep = torch.ones(x.shape[:2], dtype=x.dtype) if padding_mask is None else (~padding_mask).to(x.dtype)
        return self.head((x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1))


def build(ctx, width: int = 8) -> TinyPooled:
    """Factory ``build(ctx, **model.args)``: sized from the dataset's spec."""
    return TinyPooled(int(ctx.spec.tokenization["token_dim"]), ctx.spec.reference_cells, ctx.num_classes, width)


def not_a_module(ctx):
    return "a string"


NOT_CALLABLE = 3
