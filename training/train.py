"""``icpc train``: DDP training on ICPC shards with a fresh compression level per sample per epoch.

    torchrun --standalone --nproc-per-node 2 -m icpc.cli train --data runs/data --output runs/icpc
    icpc train --nproc-per-node 2 --data runs/data --output runs/base --baseline   # starts torchrun
    icpc train --nproc-per-node 2 --data runs/data --output runs/icpc --checkpoint-every 50 --resume

Every epoch has a plan (``plan.py``): global batches of one level each, the same number of
steps on every rank, every training sample once at its (seed, epoch, key) level. DataLoader
workers read only the drawn level of each sample (``data.py``). A checkpoint (model, optimizer,
scheduler, RNG states, the loader's position, config, spec, dataset identity) is written at every
epoch end, every ``checkpoint_every`` optimizer steps and on SIGTERM; ``--resume`` continues from
it mid-epoch, at the same or another world size. The parts: ``loop`` (steps), ``evaluation``
(held-out accuracy), ``checkpoint`` (save, check, restore), ``supervision`` (signals, the output
lock), ``metrics`` (CSV, TensorBoard, rank traces), ``distributed`` (process group).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from icpc import storage
from icpc.config import TrainConfig, to_dict
from icpc.contract import Spec, check_spec, draw_levels
from icpc.dataset import SampleTable, open_dataset
from icpc.models import build_model, plugin_record
from icpc.training import checkpoint
from icpc.training.checkpoint import Checkpointer, LoaderState
from icpc.training.data import BatchDataset, PlanSampler, default_workers, make_loader
from icpc.training.distributed import World, all_reduce_max, all_reduce_sum, gather, setup, teardown
from icpc.training.evaluation import evaluate_split
from icpc.training.loop import train_steps
from icpc.training.metrics import RunLog
from icpc.training.model import param_groups, warmup_cosine
from icpc.training.plan import EpochPlan, plan_epoch, remaining_rows
from icpc.training.supervision import STOPPED_FILE, OutputLock, StopRequest, die_with_parent

EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds", "data_wait")


@dataclass
class Hooks:
    """What a launcher adds to a run.

    on_checkpoint(path, info): called on every rank after each checkpoint (``path`` on rank 0, ""
        elsewhere); Ray Train reports it. lock_wait_s: how long rank 0 waits for the output lock
        (a restarted group may start before the old rank 0 has gone).
    """

    on_checkpoint: Callable[[str, dict[str, Any]], None] | None = None
    lock_wait_s: float = 0.0


def level_weights(cfg: TrainConfig, spec: Spec, epoch: int = 0) -> list[float]:
    """Relative draw probability of each level in ``epoch``: the schedule (a pure function of the config).

    ``level_weights`` (default uniform) until ``anneal_start`` of the epochs, then moving linearly
    to ``level_weights_end`` (when given) at the last mixed epoch; the last ``final_level0_epochs``
    epochs train level 0 only; a baseline always does.
    """
    levels = len(spec.ladder)
    for name, w in (("level_weights", cfg.level_weights), ("level_weights_end", cfg.level_weights_end)):
        if len(w) > levels:
            raise ValueError(f"{name} has {len(w)} entries but the ladder has {levels} levels")
    if cfg.baseline or epoch >= cfg.epochs - cfg.final_level0_epochs:
        return [1.0]
    start = np.zeros(levels)
    start[: len(cfg.level_weights or [1.0] * levels)] = cfg.level_weights or [1.0] * levels
    if not cfg.level_weights_end:
        return (start / start.sum()).tolist()
    end = np.zeros(levels)
    end[: len(cfg.level_weights_end)] = cfg.level_weights_end
    first = int(round(cfg.anneal_start * (cfg.epochs - cfg.final_level0_epochs)))
    span = max(1, cfg.epochs - cfg.final_level0_epochs - 1 - first)
    t = min(1.0, max(0.0, (epoch - first) / span))
    weights = (1 - t) * start / start.sum() + t * end / end.sum()
    return weights.tolist()


def epoch_plan(cfg: TrainConfig, table: SampleTable, spec: Spec, epoch: int, world: int,
               segments: list[list[int]] = ()) -> EpochPlan:
    """The plan of ``epoch`` for ``world`` ranks; after ``segments`` (earlier world sizes of this epoch
    and the batches they ran), the plan of the samples they left."""
    levels = draw_levels(cfg.seed, epoch, table.key_hash, level_weights(cfg, spec, epoch))
    tokens = table.tokens[np.arange(len(table)), levels]
    lengths = tokens if not spec.ladder[0].grid else None

    def plan(w: int, rows=None) -> EpochPlan:
        return plan_epoch(cfg.seed, epoch, w, cfg.batch_size, levels, table.shard, lengths, cfg.length_bucket,
                          cfg.shuffle_window, rows, cfg.batch_tokens, tokens)

    rows = None
    for w, done in segments:
        rows = remaining_rows(plan(w, rows), done)
    return plan(world, rows)


def train(cfg: TrainConfig, world: World, progress: bool = True, hooks: Hooks | None = None) -> dict[str, Any]:
    """Train on ``cfg.data``; returns the last epoch's metrics (rank 0 also writes them)."""
    hooks = hooks or Hooks()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()  # torchrun starts each rank in its own session: go when it goes
    stop = StopRequest()
    device, owns_group = setup(world, cfg.collective_timeout_s)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    out = cfg.output
    lock = OutputLock(out).acquire(hooks.lock_wait_s) if world.is_main else None
    try:
        row = _train(cfg, world, device, progress, hooks, stop)
    finally:
        if lock:
            lock.release()
    if owns_group:  # after a failure the group may be broken: leave it only together, on success
        teardown()
    return row


def _train(cfg: TrainConfig, world: World, device, progress: bool, hooks: Hooks, stop: StopRequest) -> dict:
    data = open_dataset(cfg.data)
    spec, out = data.spec, cfg.output
    table = data.table("train")
    if not len(table):
        raise ValueError(f"dataset {cfg.data} has no training samples (splits: {data.counts})")
    val_shards = data.shards("val")
    test_shards = data.shards("test") if cfg.test_each_epoch else []
    if world.is_main:
        storage.makedirs(out)
        storage.write_text(storage.join(out, "config.json"), json.dumps(to_dict(cfg), indent=2))
        storage.remove(storage.join(out, STOPPED_FILE))
    storage.makedirs(storage.join(out, "ranks"))
    storage.write_text(storage.join(out, "ranks", f"rank-{world.rank}.pid"), str(os.getpid()))  # for operators

    steps_estimate = epoch_plan(cfg, table, spec, 0, world.size).steps
    if cfg.max_steps_per_epoch:
        steps_estimate = min(steps_estimate, cfg.max_steps_per_epoch)
    total_updates = max(1, cfg.epochs * steps_estimate // cfg.grad_accum)
    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg.model, len(data.classes), cfg.strategy).to(device)
    plugin = plugin_record(cfg.model)  # the checkpoint names its model, so evaluate/calibrate/serve rebuild it
    # fused on CPU too: one pass over all parameters (MiniLM: per-tensor took 3.1-7.6x as long, bench/minilm_step.py)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True)
    warmup = max(1, int(cfg.warmup_fraction * total_updates))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_updates, warmup))
    identity = {"location": storage.absolute(cfg.data), "fingerprint": data.fingerprint}
    loader_state, step = LoaderState(), 0
    if cfg.resume or cfg.resume_from:
        loader_state, step = resume(cfg, world, spec, identity, model, optimizer, scheduler)
    else:
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1))  # per-rank dropout streams
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    log = RunLog(out, world.rank, world.is_main)
    writer = Checkpointer(out, cfg.keep_checkpoints) if world.is_main else None
    workers = default_workers(world.local_size) if cfg.loader_workers < 0 else cfg.loader_workers
    sampler = PlanSampler(world.rank)
    loader = make_loader(BatchDataset(table, spec, data.shared_positions, cfg.strategy, cfg.read_merge_gap),
                         sampler, workers, cfg.prefetch, device)
    if world.is_main:
        print(f"training on {len(table)} samples, {world.size} rank(s) x batch {cfg.batch_size}, "
              f"{workers} loader worker(s) per rank, device {device}", flush=True)

    def save(epoch_state: LoaderState, reason: str) -> None:
        rng = gather(checkpoint.rng_state(), world)  # the one collective a checkpoint costs the other ranks
        info = {"epoch": epoch_state.epoch, "batches": epoch_state.batches, "step": step}
        if writer is None:
            if hooks.on_checkpoint:
                hooks.on_checkpoint("", info)
            return
        state = {"model": checkpoint.snapshot(model), "optimizer": checkpoint.snapshot(optimizer),
                 "scheduler": scheduler.state_dict(), "epoch": epoch_state.epoch, "step": step,
                 "loader": epoch_state.to_json(), "rng": rng, "config": to_dict(cfg), "spec": spec.to_json(),
                 "classes": data.classes, "data": identity["location"], "dataset": identity, "model_plugin": plugin,
                 "world_size": world.size, "reason": reason}
        writer.save(state, step)
        if hooks.on_checkpoint:
            writer.wait()
            hooks.on_checkpoint(writer.last_path or storage.join(out, checkpoint.CHECKPOINT), info)

    row: dict[str, Any] = {}
    for epoch in range(loader_state.epoch, cfg.epochs):
        model.train()
        segments = loader_state.segments if epoch == loader_state.epoch else []
        start = loader_state.batches if epoch == loader_state.epoch else 0
        plan = epoch_plan(cfg, table, spec, epoch, world.size, segments)
        steps = min(plan.steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else plan.steps
        sampler.set_plan(plan, start)
        trace = _tracer(out, world, epoch, plan, start) if cfg.trace else None
        stopped = False

        def after_step(done: int, optimizer_steps: int, loss: float) -> bool:
            nonlocal step, stopped
            step = optimizer_steps
            if trace:
                trace(start + done - 1, loss)
            stopped = stop.requested
            if world.size > 1:  # every rank stops at the same step, whichever got the signal
                stopped = bool(all_reduce_max({"stop": float(stopped)}, device)["stop"])
            position = LoaderState(epoch, start + done, segments)
            if stopped:
                save(position, f"stopped by {stop.signal or 'a peer rank'}")
                return True
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and start + done < steps:
                save(position, f"every {cfg.checkpoint_every} steps")
            return False

        t0 = time.perf_counter()
        totals, step = train_steps(
            ddp, model, iter(loader), max(0, steps - start), optimizer=optimizer, scheduler=scheduler,
            grad_accum=cfg.grad_accum, world_size=world.size, device=device, num_levels=len(spec.ladder), log=log,
            step=step, desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=progress and world.is_main,
            after_step=after_step)
        epoch_seconds = time.perf_counter() - t0
        log.rank_record({"epoch": epoch + 1, "steps_run": totals.steps, "start": start, "samples": totals.samples})
        if stopped:
            if writer:
                writer.wait()
                storage.write_text(storage.join(out, STOPPED_FILE), json.dumps(
                    {"signal": stop.signal, "epoch": epoch, "batches": start + totals.steps, "step": step,
                     "checkpoint": storage.join(out, checkpoint.CHECKPOINT)}))
                print(f"stopped by {stop.signal or 'a peer'} at epoch {epoch + 1}, batch {start + totals.steps} "
                      f"of {steps}, step {step}: checkpoint saved to {out}/{checkpoint.CHECKPOINT}; continue with "
                      f"--resume", flush=True)
            return row
        sums = all_reduce_sum({"loss": totals.loss, "correct": totals.correct, "samples": totals.samples,
                               "tokens": totals.tokens, "skipped": totals.skipped, "bytes_read": totals.bytes_read,
                               "payload_bytes": totals.payload_bytes,
                               **{f"l{i}": n for i, n in enumerate(totals.levels)}}, device)
        wait = all_reduce_max({"wait": totals.wait_s / max(1e-9, totals.step_s)}, device)["wait"]
        val = evaluate_split(model, val_shards, spec, cfg.batch_size, cfg.strategy, world, device) if val_shards else {}
        test = (evaluate_split(model, test_shards, spec, cfg.batch_size, cfg.strategy, world, device)
                if test_shards else {})
        row = {"epoch": epoch + 1, "step": step, "steps": steps,
               "train_loss": sums["loss"] / max(1, sums["samples"]),
               "train_acc": sums["correct"] / max(1, sums["samples"]),
               "val_loss": val.get("loss", float("nan")), "val_acc": val.get("acc", float("nan")),
               **({"test_acc": test["acc"]} if test else {}),
               "lr": scheduler.get_last_lr()[0], "epoch_seconds": epoch_seconds,
               "samples": int(sums["samples"]), "tokens": int(sums["tokens"]),
               "levels": "/".join(str(int(sums[f"l{i}"])) for i in range(len(spec.ladder))),
               "data_wait": wait, "samples_skipped": int(sums["skipped"]),
               "read_amplification": sums["bytes_read"] / max(1, sums["payload_bytes"]),
               "partial_steps": plan.partial_steps(), "padded": plan.padded(),
               "checkpoint_seconds": writer.seconds if writer else 0.0}
        save(LoaderState(epoch + 1, 0, []), "epoch end")
        if world.is_main:
            log.epoch(row, EPOCH_SCALARS)
            skipped = f", {row['samples_skipped']} samples skipped (see warnings)" if row["samples_skipped"] else ""
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
                  f"val_acc {row['val_acc']:.4f} ({epoch_seconds:.1f} s, {totals.steps} steps/rank, "
                  f"levels {row['levels']}, data wait {100 * wait:.1f}%){skipped}", flush=True)
    if writer:
        writer.wait()
    log.close()
    if world.is_main:
        print(f"wrote {out}/{{{checkpoint.CHECKPOINT}, checkpoints/, metrics.csv, config.json, tb/}}", flush=True)
    del ddp  # release DDP's reducer (it holds the process group) before the group goes
    return row


def resume(cfg: TrainConfig, world: World, spec: Spec, identity: dict[str, Any], model, optimizer,
           scheduler) -> tuple[LoaderState, int]:
    """Load the checkpoint into the run (refusing a different run); returns (loader state, optimizer step)."""
    state, where = checkpoint.latest(cfg.output, cfg.resume_from)
    if state is None:
        if world.is_main:
            print(f"--resume: no checkpoint at {where}; starting from scratch", flush=True)
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1))
        return LoaderState(), 0
    check_spec(Spec.from_json(state["spec"]), spec, f"--resume from {where}")
    checkpoint.check_resume(state, {"config": to_dict(cfg), "dataset": identity}, where)
    model.load_state_dict(state["model"])
    implementation = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach")}  # as _train built it
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the saved groups carry the saving run's choice: keep this run's
        group.update(implementation)
    scheduler.load_state_dict(state["scheduler"])
    loader = LoaderState.from_json(state.get("loader") or {"epoch": state["epoch"], "batches": 0})
    saved_world = len(state["rng"])
    if saved_world == world.size:  # same world: every rank continues its own RNG stream and batches
        checkpoint.restore_rng(state["rng"][world.rank])
        how = "same world size: the run continues exactly"
    else:  # the rest of the epoch is re-planned for this world; new dropout streams
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1) + 104729 * (loader.epoch + 1) + loader.batches)
        if loader.batches:
            loader = LoaderState(loader.epoch, 0, [*loader.segments, [saved_world, loader.batches]])
        how = (f"{saved_world} -> {world.size} ranks: the rest of epoch {loader.epoch + 1} is re-planned, each "
               f"untrained sample once")
    if world.is_main:
        print(f"resumed from {where} (written at {state.get('reason', 'an epoch end')}): epoch {loader.epoch + 1}, "
              f"batch {loader.batches}, optimizer step {state['step']}; {how}", flush=True)
    return loader, int(state["step"])


def _tracer(out: str, world: World, epoch: int, plan: EpochPlan, start: int) -> Callable[[int, float], None]:
    """``trace(batch, loss)`` appends this rank's rows of that batch and its loss to ranks/trace-R.jsonl
    (for exact-resume checks)."""
    from icpc.training.metrics import append_text

    path = storage.join(out, "ranks", f"trace-{world.rank}.jsonl")

    def trace(batch: int, loss: float) -> None:
        rows, weights = plan.rank_rows(batch, world.rank)
        append_text(path, json.dumps({"epoch": epoch, "batch": batch, "level": int(plan.levels[batch]),
                                      "rows": rows[weights > 0].tolist(), "loss": loss}) + "\n")

    return trace
