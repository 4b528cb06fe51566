"""The step loop of one epoch: forward, backward, gradient accumulation, optimizer step, per-step logging."""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from icpc.progress import Progress


def train_epoch(ddp, model, batches: Iterable[dict[str, Any]], steps: int, *, optimizer, scheduler, grad_accum: int,
                world_size: int, device: torch.device, num_levels: int, log, step: int, desc: str,
                progress: bool) -> tuple[dict[str, float], list[int], int, int]:
    """Run ``steps`` batches; returns (totals, samples per level, steps run, optimizer step count)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    totals = {"loss": 0.0, "correct": 0, "samples": 0, "tokens": 0}
    levels_seen = [0] * num_levels
    bar = Progress(steps, desc, unit="step", enabled=progress, leave=False)
    ran = 0
    for i, batch in enumerate(itertools.islice(batches, steps)):
        tokens, positions, labels = (batch[k].to(device, non_blocking=True) for k in ("tokens", "positions", "labels"))
        mask = batch["padding_mask"].to(device) if batch["padding_mask"] is not None else None
        last_micro = (i + 1) % grad_accum == 0 or i + 1 == steps
        sync = nullcontext() if last_micro or world_size == 1 else ddp.no_sync()
        with sync, autocast:
            logits = ddp(tokens, positions, batch["level"], mask)
            loss = F.cross_entropy(logits.float(), labels)
            (loss / grad_accum).backward()
        if last_micro:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
        totals["loss"] += loss.item() * len(labels)
        totals["correct"] += (logits.argmax(1) == labels).sum().item()
        totals["samples"] += len(labels)
        totals["tokens"] += tokens.shape[0] * tokens.shape[1]
        levels_seen[batch["level"]] += len(labels)
        if last_micro and step % 10 == 0:
            log.scalar("train/loss", loss.item(), step)
            log.scalar("train/lr", scheduler.get_last_lr()[0], step)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", level=batch["level"])
        ran = i + 1
    bar.close()
    return totals, levels_seen, ran, step
