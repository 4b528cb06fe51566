"""The built-in ``transformer`` plugin: a plain encoder whose only ICPC part is ``pos_table[positions]``.

    icpc train --data runs/data --output runs/icpc                      # --model transformer is the default
    icpc train --data runs/data --output runs/ft --set model.weights=runs/icpc/last.pt   # start from a checkpoint

Its size comes from ``model.dim``, ``depth``, ``heads``, ``mlp_ratio`` and ``dropout``; it takes no
``model.args``. ``model.weights`` starts it from a state dict of the same shapes (an ICPC checkpoint of
this plugin, or its ``model`` saved alone); a tensor of another shape is refused, never cropped.
"""

from __future__ import annotations

import torch
from torch import nn

from icpc.config import ModelConfig
from icpc.contract import Spec, interpolation_matrix


class TokenClassifier(nn.Module):
    """Embed tokens, add the learned position of each token, encode, mean-pool, classify.

    Tokens are ``(B, N, token_dim)`` (uint8 pixels, float spectrogram values; ``embedding``
    ``linear``) or ``(B, N)`` integer ids (text; ``embedding`` ``vocab``). ``positions`` are
    ``(B, N)`` indices into the reference-grid table of
    ``spec.reference_cells`` rows. With strategy ``interpolate`` the table is first resized to
    the level's grid (FlexiViT) and ``positions`` index that resized table.
    """

    def __init__(self, spec: Spec, cfg: ModelConfig, num_classes: int, strategy: str = "consistent",
                 embedding: str = "linear"):
        super().__init__()
        self.spec, self.strategy = spec, strategy
        tok = spec.tokenization
        if embedding == "vocab":  # token ids (text)
            self.embed: nn.Module = nn.Embedding(int(tok["vocab_size"]), cfg.dim)
        else:
            self.embed = nn.Linear(int(tok["token_dim"]), cfg.dim)
        self.pos_table = nn.Parameter(torch.zeros(spec.reference_cells, cfg.dim))
        nn.init.trunc_normal_(self.pos_table, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio), cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_classes)
        if strategy == "interpolate":
            for i, level in enumerate(spec.ladder):
                if level.grid:
                    self.register_buffer(f"interp_{i}", torch.from_numpy(
                        interpolation_matrix(spec.reference_grid, level.grid)), persistent=False)

    def position_table(self, level: int) -> torch.Tensor:
        """(rows, D) table that ``positions`` index at this level."""
        if self.strategy == "interpolate" and hasattr(self, f"interp_{level}"):
            return getattr(self, f"interp_{level}") @ self.pos_table
        return self.pos_table

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, level: int = 0,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, classes)``; ``padding_mask`` ``(B, N)`` is True where a token is padding."""
        if tokens.dtype == torch.uint8:
            tokens = tokens.float() / 127.5 - 1.0
        elif tokens.is_floating_point():
            tokens = tokens.float()
        x = self.embed(tokens) + self.position_table(level)[positions]
        x = self.encoder(x, src_key_padding_mask=padding_mask)
        if padding_mask is None:
            pooled = x.mean(1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1)
        return self.head(self.norm(pooled))


def build(ctx) -> TokenClassifier:
    """Factory of the ``transformer`` plugin (``ctx``: icpc.models.ModelContext)."""
    from icpc.pipeline.modalities import get_modality

    model = TokenClassifier(ctx.spec, ctx.cfg, ctx.num_classes, ctx.strategy,
                            embedding=get_modality(ctx.spec.modality).embedding)
    if ctx.weights:
        load_same_shapes(model, ctx.weights)
    return model


def load_same_shapes(model: nn.Module, location: str) -> None:
    """Load ``location`` into ``model``, refusing any missing, extra or differently shaped tensor (names them)."""
    from icpc.models.weights import read_weights

    state, own = read_weights(location), model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or extra:
        raise ValueError(f"model.weights={location!r} does not fit this transformer (model.dim/depth/heads and "
                         f"the dataset's grid must match the run that wrote it): " + "; ".join(
                             wrong + [f"missing {missing[:5]}"] * bool(missing) + [f"unexpected {extra[:5]}"] * bool(extra)))
    model.load_state_dict(state)
