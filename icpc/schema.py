"""The batch schema of ``icpc.ICPCLoader``: every field's name, dtype, shape and meaning, in one table.

This table is the one source of truth: ``python -m icpc.schema`` prints it as the Markdown table
the README shows, and a test checks real batches against the README's copy
(tests/icpc/test_schema.py). Shapes use B
(samples in the rank's batch), N (tokens of the longest sample in the batch) and D (values per
token: ``token_dim`` in the manifest). Aliases are opt-in (``ICPCLoader(..., aliases=["hf"])``):
Hugging Face encoders take ``input_ids`` / ``position_ids`` / ``attention_mask`` (1 = keep), timm
NaFlex ViTs take ``patches`` / ``patch_coord`` / ``patch_valid`` (True = real patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

ALIASES = ("hf", "timm")


@dataclass(frozen=True)
class Field:
    """One entry of a batch dict."""

    name: str
    group: str       # icpc (always there), keys (with keys=True), hf or timm (the aliases)
    dtype: str       # torch dtype name ("or None" where absent), "token" (the manifest's token dtype), int, list[str]
    shape: str       # comma-separated symbols (B, N, D, 2; [,D] only where tokens are vectors); "" for an int
    meaning: str


BATCH_FIELDS: tuple[Field, ...] = (
    Field("tokens", "icpc", "token", "B,N[,D]",
          "token payloads at the batch's level: uint8 pixels (image/video), float16 spectrogram values (audio), "
          "int32 token ids (text: no D); padding is 0"),
    Field("positions", "icpc", "int64", "B,N",
          "each token's index in the level-0 reference grid (row-major), after the position strategy; padding is 0"),
    Field("padding_mask", "icpc", "bool or None", "B,N",
          "True = padding (text batches of unequal lengths); None when no sample of the batch is padded"),
    Field("labels", "icpc", "int64", "B", "class index (into the dataset's classes)"),
    Field("weights", "icpc", "float32", "B",
          "loss weight: 1 for a real sample, 0 for a padding copy (a rank left without a sample in a partial batch)"),
    Field("rows", "icpc", "int64", "B", "the samples' rows in the split's index table (-1 for a stand-in)"),
    Field("level", "icpc", "int", "", "compression level of every sample in the batch (0 = uncompressed)"),
    Field("step", "icpc", "int", "", "the batch's step in the epoch's plan (0-based; the same on every rank)"),
    Field("global_samples", "icpc", "int", "",
          "real samples of the global batch over all ranks (what icpc.plan_loss divides by)"),
    Field("skipped", "icpc", "int", "", "samples the reader skipped in this batch (corrupt payload, truncated shard)"),
    Field("bytes_read", "icpc", "int", "", "bytes fetched from storage for this batch"),
    Field("payload_bytes", "icpc", "int", "", "bytes of the payloads used (bytes_read / this = read amplification)"),
    Field("keys", "keys", "list[str]", "B", "sample keys (only with keys=True: the key column is read once)"),
    Field("input_ids", "hf", "int64", "B,N", "text only: tokens as int64 ids"),
    Field("position_ids", "hf", "int64", "B,N", "positions (the model adds pos_table[position_ids])"),
    Field("attention_mask", "hf", "int64", "B,N", "1 = keep, 0 = padding (not padding_mask)"),
    Field("patches", "timm", "float32", "B,N,D",
          "image only: tokens as float32, uint8 pixels scaled to [0, 1] (normalise as the model expects)"),
    Field("patch_coord", "timm", "int64", "B,N,2", "(y, x) of each patch in the level-0 reference patch grid"),
    Field("patch_valid", "timm", "bool", "B,N", "True = a real patch, False = padding"),
)


def markdown_table() -> str:
    """The schema as the Markdown table in the README (``python -m icpc.schema`` prints it)."""
    lines = ["| field | with | dtype | shape | meaning |", "|---|---|---|---|---|"]
    for f in BATCH_FIELDS:
        with_ = {"icpc": "always", "keys": "keys=True", "hf": 'aliases=["hf"]', "timm": 'aliases=["timm"]'}[f.group]
        shape = (f"({f.shape})" if "," in f.shape else f"({f.shape},)") if f.shape else "scalar"
        lines.append(f"| `{f.name}` | {with_} | {f.dtype} | {shape} | {f.meaning} |")
    return "\n".join(lines)


def check_aliases(aliases: Sequence[str], spec) -> None:
    """Refuse unknown aliases and aliases the modality cannot fill, naming the allowed ones."""
    for a in aliases:
        if a not in ALIASES:
            raise ValueError(f"aliases={list(aliases)}: unknown {a!r}; choose from {list(ALIASES)}")
    if "timm" in aliases and (spec.modality != "image" or len(spec.reference_grid) != 2):
        raise ValueError(f"aliases=['timm'] gives NaFlex patches of a 2-D image grid; this dataset is "
                         f"{spec.modality} with reference grid {tuple(spec.reference_grid)}: use the ICPC fields")


def add_aliases(batch: dict[str, Any], spec, aliases: Sequence[str]) -> dict[str, Any]:
    """Add the ``hf`` and/or ``timm`` alias fields to a collated batch (in place; returns it)."""
    import torch

    tokens, positions, mask = batch["tokens"], batch["positions"], batch["padding_mask"]
    keep = torch.ones(positions.shape, dtype=torch.bool) if mask is None else ~mask
    if "hf" in aliases:
        if tokens.ndim == 2:
            batch["input_ids"] = tokens.long()
        batch["position_ids"] = positions
        batch["attention_mask"] = keep.long()
    if "timm" in aliases:
        batch["patches"] = tokens.float() / 255.0 if tokens.dtype == torch.uint8 else tokens.float()
        width = spec.reference_grid[1]
        batch["patch_coord"] = torch.stack([positions // width, positions % width], dim=-1)
        batch["patch_valid"] = keep
    return batch


if __name__ == "__main__":
    print(markdown_table())
