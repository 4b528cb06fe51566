"""``icpc train``: DDP training on ICPC shards with a fresh compression level per sample per epoch.

    torchrun --standalone --nproc-per-node 2 -m icpc.cli train --data runs/data --output runs/icpc
    icpc train --nproc-per-node 2 --data runs/data --output runs/base --baseline   # spawns torchrun

Each epoch every rank runs ``steps_per_epoch`` batches (the same count on every rank, so no DDP
hang); each batch holds one level. A checkpoint (model, optimizer, scheduler, epoch, step, RNG
state, resolved config, data spec) is written after every epoch; ``--resume`` continues from it.
The parts: ``loop`` (steps), ``evaluation`` (held-out accuracy), ``checkpoint`` (save, check,
restore), ``metrics`` (CSV, TensorBoard, rank traces), ``distributed`` (process group).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from icpc import storage
from icpc.config import TrainConfig, to_dict
from icpc.contract import Spec, check_spec
from icpc.dataset import read_manifest, split_shards, split_shards_or_empty
from icpc.modelio import build_model
from icpc.training import checkpoint
from icpc.training.data import steps_per_epoch, train_batches
from icpc.training.distributed import World, all_reduce_sum, gather, setup, teardown
from icpc.training.evaluation import evaluate_split
from icpc.training.loop import train_epoch
from icpc.training.metrics import RunLog
from icpc.training.model import param_groups, warmup_cosine

EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds")


def train(cfg: TrainConfig, world: World, progress: bool = True) -> dict[str, Any]:
    """Train on ``cfg.data``; returns the last epoch's metrics (rank 0 also writes them)."""
    device, owns_group = setup(world)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    manifest = read_manifest(cfg.data)
    spec = Spec.from_json(manifest["spec"])
    shards = split_shards(manifest, cfg.data, "train")
    val_shards = split_shards_or_empty(manifest, cfg.data, "val")
    out = cfg.output
    if world.is_main:
        storage.makedirs(out)
        storage.write_text(storage.join(out, "config.json"), json.dumps(to_dict(cfg), indent=2))

    weights = [1.0] if cfg.baseline else (cfg.level_weights or [1.0] * len(spec.ladder))
    if len(weights) > len(spec.ladder):
        raise ValueError(f"level_weights has {len(weights)} entries but the ladder has {len(spec.ladder)} levels")
    steps = steps_per_epoch(manifest["counts"]["train"], world.size, cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    total_updates = cfg.epochs * steps // cfg.grad_accum

    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg.model, len(manifest["classes"]), cfg.strategy).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_fraction * total_updates))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_updates, warmup))
    start_epoch, step = resume(cfg, world, spec, model, optimizer, scheduler) if cfg.resume else (0, 0)
    if not cfg.resume or start_epoch == 0:
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1))  # per-rank dropout streams
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    log = RunLog(out, world.rank, world.is_main)
    row: dict[str, Any] = {}

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        stream = train_batches(shards, spec, seed=cfg.seed, epoch=epoch, rank=world.rank, world=world.size,
                               batch_size=cfg.batch_size, weights=weights, strategy=cfg.strategy,
                               shuffle_buffer=cfg.shuffle_buffer, length_bucket=cfg.length_bucket)
        t0 = time.perf_counter()
        totals, levels_seen, ran, step = train_epoch(
            ddp, model, stream, steps, optimizer=optimizer, scheduler=scheduler, grad_accum=cfg.grad_accum,
            world_size=world.size, device=device, num_levels=len(spec.ladder), log=log, step=step,
            desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=progress and world.is_main)
        epoch_seconds = time.perf_counter() - t0
        log.rank_record({"epoch": epoch + 1, "steps_run": ran, "samples": totals["samples"]})
        totals = all_reduce_sum(totals, device)
        levels_seen = [int(x) for x in all_reduce_sum(dict(enumerate(levels_seen)), device).values()]
        val = (evaluate_split(model, val_shards, spec, cfg.batch_size, cfg.strategy, world, device)
               if val_shards else {})
        row = {"epoch": epoch + 1, "step": step, "steps": steps,
               "train_loss": totals["loss"] / max(1, totals["samples"]),
               "train_acc": totals["correct"] / max(1, totals["samples"]),
               "val_loss": val.get("loss", float("nan")), "val_acc": val.get("acc", float("nan")),
               "lr": scheduler.get_last_lr()[0], "epoch_seconds": epoch_seconds,
               "samples": int(totals["samples"]), "tokens": int(totals["tokens"]),
               "levels": "/".join(map(str, levels_seen))}
        rng = gather(checkpoint.rng_state(), world)
        if world.is_main:
            checkpoint.write({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "rng": rng,
                "config": to_dict(cfg), "spec": spec.to_json(), "classes": manifest["classes"],
                "data": storage.absolute(cfg.data), "world_size": world.size,
            }, out, epoch + 1)
            log.epoch(row, EPOCH_SCALARS)
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
                  f"val_acc {row['val_acc']:.4f} ({epoch_seconds:.1f} s, {steps} steps/rank, "
                  f"levels {row['levels']})", flush=True)
    log.close()
    if world.is_main:
        print(f"wrote {out}/{{{checkpoint.CHECKPOINT}, metrics.csv, config.json, tb/}}", flush=True)
    del ddp  # release DDP's reducer (it holds the process group) before the group goes
    if owns_group:
        teardown()
    return row


def resume(cfg: TrainConfig, world: World, spec: Spec, model, optimizer, scheduler) -> tuple[int, int]:
    """Load ``OUTPUT/last.pt`` into the run (refusing a different run); returns (epoch, step) to continue at."""
    state = checkpoint.latest(cfg.output)
    if state is None:
        return 0, 0
    where = storage.join(cfg.output, checkpoint.CHECKPOINT)
    check_spec(Spec.from_json(state["spec"]), spec, f"--resume from {where}")
    checkpoint.check_resume_config(state["config"], to_dict(cfg), where)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) == world.size:  # same world: every rank continues its own RNG stream
        checkpoint.restore_rng(state["rng"][world.rank])
    else:
        if world.is_main:
            print(f"warning: resuming a {len(state['rng'])}-rank run with {world.size} ranks: the level "
                  f"draws stay the same, dropout streams and shard order do not", flush=True)
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1) + 104729 * state["epoch"])
    if world.is_main:
        print(f"resumed from {where}: epoch {state['epoch']}, step {state['step']}", flush=True)
    return state["epoch"], state["step"]
