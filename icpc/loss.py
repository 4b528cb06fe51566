"""The loss of a balanced-plan batch: the mean over the global batch's real samples, whatever the split over ranks.

An ``icpc.ICPCLoader`` batch can hold weight-0 padding copies (a rank left without a sample in a
partial global batch) and the global batch can be partial (the last one of a level). DDP (and
Lightning, the Hugging Face Trainer) average gradients over ranks, so a rank's loss is

    sum(weights * per_sample_loss) * world_size / global_samples

and the averaged gradient is the gradient of the mean over the global batch's real samples: a
padding copy changes nothing, and a sample in a 3-sample batch weighs what one in a full batch of
the same rank size does. ``icpc train`` uses these functions too (one implementation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _world_size(world_size: int | None) -> int:
    if world_size is not None:
        return world_size
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def plan_loss(per_sample: torch.Tensor, batch: dict[str, Any], world_size: int | None = None) -> torch.Tensor:
    """This rank's loss for ``backward()`` from per-sample losses ``(B,)`` (``reduction="none"``).

    ``world_size``: ranks whose gradients are averaged (default: torch.distributed's, else 1).
    """
    weights = batch["weights"].to(per_sample.device, non_blocking=True)
    if per_sample.shape != weights.shape:
        raise ValueError(f"per-sample loss has shape {tuple(per_sample.shape)}, the batch has {tuple(weights.shape)} "
                         f"weights: compute it with reduction='none'")
    return (per_sample * weights).sum() * _world_size(world_size) / max(1, int(batch["global_samples"]))


def plan_cross_entropy(logits: torch.Tensor, batch: dict[str, Any], world_size: int | None = None
                       ) -> torch.Tensor:
    """``plan_loss`` of the cross-entropy of ``logits`` ``(B, classes)`` against ``batch["labels"]`` (in fp32)."""
    labels = batch["labels"].to(logits.device, non_blocking=True)
    return plan_loss(F.cross_entropy(logits.float(), labels, reduction="none"), batch, world_size)
