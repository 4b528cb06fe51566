"""The ``timm:NAME`` plugin: timm's ViT family on ICPC tokens; timm's own layers, ``pos_embed`` indexed by stored positions.

    icpc train --nproc-per-node 2 --data runs/data --output runs/vit --model timm:vit_tiny_patch16_224 \
        --set model.args.depth=4 --lr 1e-3
    icpc train ... --model timm:vit_small_patch16_224 --set model.weights=/models/vit_small.safetensors

The model is ``timm.create_model(NAME, img_size=grid x patch, patch_size=patch, in_chans=channels,
num_classes=classes, **model.args)``, random init, so it fits the dataset. The adapter applies timm's
patch embedding to the stored patches (flattened ``(p, p, c)``: the conv weight ``(D, C, p, p)`` is
permuted to a matrix over that layout, pixels normalised with the model's ``pretrained_cfg``
mean/std), adds ``pos_embed`` rows picked by the stored positions (after the class / distillation /
register tokens when ``pos_embed`` covers them), then runs timm's blocks, norm and head (``avg``
pooling skips padding). ``model.weights`` loads through timm's ``checkpoint_filter_fn``: a position
table of another grid is resampled with ``resample_abs_pos_embed``, a patch embedding of another
patch size with ``resample_patch_embed``, RGB weights summed for grayscale (``adapt_input_conv``),
and a head of another class count replaced (a log line says so).

Taken: ``VisionTransformer`` models with an absolute ``pos_embed`` (``vit_*``, ``deit_*``, ``deit3_*``,
``flexivit_*``, ``vit_*_reg*``), on image and audio-spectrogram patches. Refused with the reason: models
without an absolute table (BEiT's relative bias, Swin's windows, EVA/RoPE and other classes), video
tubelets (timm has no 3-D patch embedding in this family) and text (use ``hf:``).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from icpc.contract import Spec
from icpc.models.weights import read_weights

# model.args ICPC sets from the dataset (a user value would contradict the data)
DATA_ARGS = ("img_size", "patch_size", "in_chans", "num_classes")


def check_spec(spec: Spec) -> None:
    """Refuse modalities whose tokens are not 2-D patches of one image-like plane."""
    if spec.modality == "text":
        raise ValueError("timm: models take image-like patches; text ids need a text encoder: use --model hf:PATH "
                         "(e.g. a BERT folder) or the built-in transformer")
    if spec.modality == "video":
        raise ValueError("timm: ViT-family models embed 2-D patches; video tubelets (t, p, p) have no timm patch "
                         "embedding in this family: use the built-in transformer (--model transformer)")
    if len(spec.reference_grid) != 2 or "patch" not in spec.tokenization:
        raise ValueError(f"timm: needs a 2-D patch grid; the {spec.modality} data has grid {spec.reference_grid} "
                         f"and tokenization {sorted(spec.tokenization)}")


def geometry(spec: Spec) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(img_size, patch_size, in_chans) of the timm model for the data: images (side, side, c), audio (mels, frames, 1)."""
    patch = spec.tokenization["patch"]
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    gh, gw = spec.reference_grid
    return (gh * ph, gw * pw), (ph, pw), int(spec.tokenization.get("channels", 1))


class TimmViT(nn.Module):
    """A timm ``VisionTransformer`` (``self.vit``, unchanged) fed ICPC tokens at their stored positions.

    ``forward(tokens (B, N, p*p*c) uint8 or float, positions (B, N) reference-grid indices, level,
    padding_mask (B, N) True = padding) -> logits (B, classes)``.
    """

    def __init__(self, vit: nn.Module, spec: Spec, strategy: str):
        super().__init__()
        self.vit, self.spec, self.strategy = vit, spec, strategy
        self.num_prefix = int(vit.num_prefix_tokens)
        self.table_offset = 0 if vit.no_embed_class else self.num_prefix  # pos_embed rows before the patches
        _, (ph, pw), chans = geometry(spec)
        scale, shift = pixel_affine(vit, spec, chans, ph * pw)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """timm's patch embedding of stored patches: (B, N, p*p*c) -> (B, N, D)."""
        proj = self.vit.patch_embed.proj
        weight = proj.weight.permute(0, 2, 3, 1).reshape(proj.out_channels, -1)  # (D, C, p, p) -> (D, p*p*C)
        x = tokens.float() * self.scale + self.shift
        return self.vit.patch_embed.norm(F.linear(x, weight, proj.bias))

    def position_table(self, level: int) -> torch.Tensor:
        """(rows, D) patch rows of ``pos_embed`` that ``positions`` index (``interpolate``: resized to the level)."""
        table = self.vit.pos_embed[0, self.table_offset:]
        grid = tuple(self.spec.ladder[level].grid)
        if self.strategy == "interpolate" and grid != tuple(self.spec.reference_grid):
            from timm.layers import resample_abs_pos_embed

            table = resample_abs_pos_embed(table[None], new_size=grid, old_size=self.spec.reference_grid,
                                           num_prefix_tokens=0)[0]
        return table

    def prefix(self, batch: int) -> torch.Tensor:
        """(B, prefix, D) class / distillation / register tokens, with their ``pos_embed`` rows where it has them."""
        parts = [t for t in (getattr(self.vit, n, None) for n in ("cls_token", "dist_token", "reg_token")) if t is not None]
        x = torch.cat(parts, dim=1) if parts else self.vit.pos_embed.new_zeros(1, 0, self.vit.embed_dim)
        if self.table_offset:
            x = x + self.vit.pos_embed[:, : self.table_offset]
        return x.expand(batch, -1, -1)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, level: int = 0,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        x = self.embed(tokens) + self.position_table(level)[positions.long()]
        x = vit.pos_drop(torch.cat([self.prefix(x.shape[0]), x], dim=1))
        padded = padding_mask is not None and bool(padding_mask.any())
        if not padded:
            x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        if padded:
            keep = torch.cat([padding_mask.new_zeros(x.shape[0], self.num_prefix), padding_mask], 1).logical_not()
            for block in vit.blocks:
                x = block(x, attn_mask=keep[:, None, None, :])
        else:
            x = vit.blocks(x)
        x = vit.norm(x)
        if not padded or vit.global_pool == "token":
            return vit.forward_head(x)
        if vit.global_pool != "avg" or vit.attn_pool is not None:
            raise ValueError(f"timm:{type(vit).__name__} pools with {vit.global_pool!r}, which would count padding; "
                             f"batch samples of one length or use model.args.global_pool='avg' or 'token'")
        keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
        pooled = (x[:, self.num_prefix:] * keep).sum(1) / keep.sum(1).clamp_min(1)
        return vit.head(vit.head_drop(vit.fc_norm(pooled)))


def pixel_affine(vit: nn.Module, spec: Spec, chans: int, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) over a flattened (p, p, c) token: uint8 -> (x / 255 - mean_c) / std_c; float tokens as stored."""
    if spec.token_dtype != "uint8":  # spectrogram values: the scale the data was built with
        return torch.ones(cells * chans), torch.zeros(cells * chans)
    cfg = getattr(vit, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
    if len(mean) != chans:  # grayscale data, RGB statistics: their mean (adapt_input_conv sums the RGB kernels)
        mean, std = mean.mean().repeat(chans), std.mean().repeat(chans)
    return (1 / (255 * std)).repeat(cells), (-mean / std).repeat(cells)


def create(name: str, spec: Spec, num_classes: int, args: dict) -> nn.Module:
    """timm's model ``name`` built for the data; refuses families without an absolute position table."""
    import timm
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer

    check_spec(spec)
    if clash := sorted(set(args) & set(DATA_ARGS)):
        raise ValueError(f"model.args {clash}: set from the dataset (grid x patch, channels, classes); drop them")
    if not timm.is_model(name):
        raise ValueError(f"timm:{name}: timm {timm.__version__} has no such model; list them with "
                         f"python -c \"import timm; print(timm.list_models('vit_*'))\"")
    img_size, patch_size, chans = geometry(spec)
    vit = timm.create_model(name, pretrained=False, img_size=img_size, patch_size=patch_size, in_chans=chans,
                            num_classes=num_classes, **args)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"timm:{name} is a {type(vit).__name__}, not a VisionTransformer: ICPC indexes an absolute "
                         f"position table (pos_embed) by the stored positions, and this family positions tokens "
                         f"otherwise (relative bias, rotary, windows or convolutions); use a vit_*/deit_* model")
    if vit.pos_embed is None:
        raise ValueError(f"timm:{name} has no absolute position table (pos_embed is None: rotary or no positions); "
                         f"ICPC's stored positions need one")
    proj = vit.patch_embed.proj
    if not isinstance(vit.patch_embed, PatchEmbed) or not isinstance(proj, nn.Conv2d) or \
            proj.kernel_size != proj.stride or tuple(proj.kernel_size) != patch_size or proj.padding != (0, 0):
        raise ValueError(f"timm:{name}: its patch embedding is not one non-overlapping {patch_size} convolution, "
                         f"so stored patches cannot be embedded by it")
    return vit


def load_pretrained(vit: nn.Module, location: str, name: str) -> None:
    """Load ``location`` into ``vit`` the way timm does (checkpoint_filter_fn: resampled table and patch kernel)."""
    from timm.models import adapt_input_conv
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_weights(location)
    if state and all(k.startswith("vit.") for k in state):  # an ICPC checkpoint of this plugin
        state = {k.removeprefix("vit."): v for k, v in state.items()}
    before = {k: tuple(state[k].shape) for k in ("pos_embed", "patch_embed.proj.weight") if k in state}
    state = checkpoint_filter_fn(state, vit)
    notes = [f"{k} {before[k]} -> {tuple(state[k].shape)} (timm resample)" for k in before
             if k in state and tuple(state[k].shape) != before[k]]
    key, own = "patch_embed.proj.weight", vit.patch_embed.proj.weight
    if key in state and state[key].shape[1] != own.shape[1]:
        notes.append(f"{key}: {state[key].shape[1]} input channels adapted to {own.shape[1]} (timm adapt_input_conv)")
        state[key] = adapt_input_conv(own.shape[1], state[key])
    head, new_head = vit.get_classifier(), False
    if isinstance(head, nn.Linear) and "head.weight" in state and state["head.weight"].shape != head.weight.shape:
        notes.append(f"head replaced: the file has {state['head.weight'].shape[0]} classes, the data "
                     f"{head.out_features} (new head, random init)")
        state, new_head = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}, True
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (new_head and k.startswith(("head.", "head_dist.")))]
    if missing or unexpected:
        raise ValueError(f"model.weights={location!r} does not fit timm:{name}: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]}; is it a checkpoint of this architecture (same depth and width)?")
    print(f"model.weights: loaded {location} into timm:{name}" + "".join(f"; {n}" for n in notes),
          file=sys.stderr, flush=True)


def build(ctx, **args) -> TimmViT:
    """Factory of ``timm:NAME`` (``ctx``: icpc.models.ModelContext; ``args``: timm.create_model keywords)."""
    vit = create(ctx.name, ctx.spec, ctx.num_classes, args)
    if ctx.weights:
        load_pretrained(vit, ctx.weights, ctx.name)
    return TimmViT(vit, ctx.spec, ctx.strategy)
