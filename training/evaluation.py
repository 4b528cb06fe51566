"""Held-out evaluation during training: level-0 loss and accuracy, the samples dealt across ranks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from icpc.contract import Spec
from icpc.training.data import eval_batches
from icpc.training.distributed import World, all_reduce_sum


@torch.no_grad()
def evaluate_split(model, shards: list[str], spec: Spec, batch_size: int, strategy: str, world: World,
                   device: torch.device) -> dict[str, float]:
    """Level-0 loss and accuracy over ``shards``, summed over ranks."""
    model.eval()
    totals: dict[str, Any] = {"loss": 0.0, "correct": 0, "samples": 0}
    for batch in eval_batches(shards, spec, 0, batch_size=batch_size, strategy=strategy,
                              rank=world.rank, world=world.size):
        labels = batch["labels"].to(device)
        mask = batch["padding_mask"].to(device) if batch["padding_mask"] is not None else None
        logits = model(batch["tokens"].to(device), batch["positions"].to(device), 0, mask).float()
        totals["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        totals["correct"] += (logits.argmax(1) == labels).sum().item()
        totals["samples"] += len(labels)
    totals = all_reduce_sum(totals, device)
    return {"loss": totals["loss"] / max(1, totals["samples"]), "acc": totals["correct"] / max(1, totals["samples"])}
