"""The step loop of one epoch: next batch, forward, weighted loss, backward, optimizer step, per-step logging.

The loss of a rank's batch is ``icpc.plan_loss``: ``sum(weight * cross_entropy) * world /
global_samples``, so DDP's averaged gradient is the mean over the global batch's real samples,
whatever its split over ranks (partial batches, weight-0 padding, skipped samples).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from icpc.loss import plan_loss
from icpc.progress import Progress


@dataclass
class EpochTotals:
    """What one rank did in an epoch (summed over ranks before it is reported)."""

    loss: float = 0.0            # summed over real samples
    correct: int = 0
    samples: int = 0             # real samples trained (weight 1)
    tokens: int = 0              # tokens processed, padding and weight-0 copies included
    skipped: int = 0             # samples the loader skipped (truncated shard, corrupt payload)
    bytes_read: int = 0          # bytes the loader fetched
    payload_bytes: int = 0       # bytes of the payloads it used
    wait_s: float = 0.0          # time spent waiting for the next batch
    step_s: float = 0.0          # time of the steps, waiting included
    steps: int = 0
    levels: list[int] = field(default_factory=list)   # real samples per level


def train_steps(ddp, model, batches: Iterable[dict[str, Any]], steps: int, *, optimizer, scheduler,
                grad_accum: int, world_size: int, device: torch.device, num_levels: int, log, step: int,
                desc: str, progress: bool, after_step: Callable[[int, int, float], bool] | None = None
                ) -> tuple[EpochTotals, int]:
    """Run the ``steps`` batches of ``batches`` (an ``icpc.ICPCLoader`` pass); returns (totals, optimizer step count).

    ``after_step(batches done, optimizer steps, mean loss of the last batch)`` runs after every
    optimizer step; returning True
    stops the epoch there (a checkpoint-and-exit request).
    """
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    totals = EpochTotals(levels=[0] * num_levels)
    bar = Progress(steps, desc, unit="step", enabled=progress, leave=False)
    t_prev = t0 = time.perf_counter()
    for i, batch in enumerate(batches):
        totals.wait_s += time.perf_counter() - t0
        tokens, positions, labels, weights = (batch[k].to(device, non_blocking=True)
                                              for k in ("tokens", "positions", "labels", "weights"))
        mask = batch["padding_mask"].to(device, non_blocking=True) if batch["padding_mask"] is not None else None
        last_micro = (i + 1) % grad_accum == 0 or i + 1 == steps
        sync = nullcontext() if last_micro or world_size == 1 else ddp.no_sync()
        with sync, autocast:
            logits = ddp(tokens, positions, batch["level"], mask)
            per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
            loss = plan_loss(per_sample, batch, world_size)
            (loss / grad_accum).backward()
        if last_micro:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
        real = weights > 0
        n = int(real.sum().item())
        mean_loss = float((per_sample.detach() * weights).sum().item()) / max(1, n)
        totals.loss += mean_loss * n
        totals.correct += int(((logits.argmax(1) == labels) & real).sum().item())
        totals.samples += n
        totals.tokens += tokens.shape[0] * tokens.shape[1]
        totals.levels[batch["level"]] += n
        totals.skipped += batch["skipped"]
        totals.bytes_read += batch["bytes_read"]
        totals.payload_bytes += batch["payload_bytes"]
        totals.steps += 1
        now = time.perf_counter()
        totals.step_s += now - t_prev
        t_prev = now
        if last_micro and step % 10 == 0:
            log.scalar("train/loss", mean_loss, step)
            log.scalar("train/lr", scheduler.get_last_lr()[0], step)
        bar.update()
        bar.set_postfix(loss=f"{mean_loss:.3f}", level=batch["level"])
        if last_micro and after_step is not None and after_step(i + 1, step, mean_loss):
            break
        t0 = time.perf_counter()
    bar.close()
    return totals, step
