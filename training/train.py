"""``icpc train``: DDP training on ICPC shards with a fresh compression level per sample per epoch.

    torchrun --standalone --nproc-per-node 2 -m icpc.cli train --data runs/data --output runs/icpc
    icpc train --nproc-per-node 2 --data runs/data --output runs/base --baseline   # starts torchrun
    icpc train --nproc-per-node 2 --data runs/data --output runs/icpc --checkpoint-every 50 --resume

The data comes from ``icpc.ICPCLoader`` (icpc/loader.py), the public API users' own loops use:
every epoch has a plan (``plan.py``): global batches of one level each, the same number of
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

import torch

from icpc import storage
from icpc.config import TrainConfig, to_dict
from icpc.contract import Spec, check_spec
from icpc.dataset import SampleTable, open_dataset
from icpc.loader import ICPCLoader, LoaderState
from icpc.loader import epoch_plan as plan_of_epoch
from icpc.models import build_model, plugin_record
from icpc.schedule import LevelSchedule
from icpc.training import checkpoint
from icpc.training.checkpoint import Checkpointer
from icpc.training.distributed import World, all_reduce_max, all_reduce_sum, gather, setup, teardown
from icpc.training.evaluation import evaluate_split
from icpc.training.loop import train_steps
from icpc.training.metrics import RunLog
from icpc.training.model import param_groups, warmup_cosine
from icpc.training.plan import EpochPlan
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
    """Relative draw probability of each level in ``epoch`` (``icpc.LevelSchedule`` of the config)."""
    return LevelSchedule.from_config(cfg).at(epoch, len(spec.ladder))


def epoch_plan(cfg: TrainConfig, table: SampleTable, spec: Spec, epoch: int, world: int,
               segments: list[list[int]] = ()) -> EpochPlan:
    """The plan of ``epoch`` for ``world`` ranks (``icpc.loader.epoch_plan`` with the config's settings)."""
    return plan_of_epoch(table, spec, epoch, world, seed=cfg.seed, batch_size=cfg.batch_size,
                         schedule=LevelSchedule.from_config(cfg), batch_tokens=cfg.batch_tokens,
                         shuffle_window=cfg.shuffle_window, length_bucket=cfg.length_bucket, segments=segments)


def make_train_loader(cfg: TrainConfig, data, world: World, device) -> ICPCLoader:
    """The run's ``icpc.ICPCLoader`` over the training split (what a user's own loop would build)."""
    return ICPCLoader(data, split="train", batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens, seed=cfg.seed,
                      schedule=LevelSchedule.from_config(cfg), strategy=cfg.strategy, rank=world.rank,
                      world_size=world.size, num_workers=cfg.loader_workers, prefetch=cfg.prefetch,
                      pin_memory=device.type == "cuda", shuffle_window=cfg.shuffle_window,
                      length_bucket=cfg.length_bucket, read_merge_gap=cfg.read_merge_gap,
                      max_batches=cfg.max_steps_per_epoch)


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
    loader = make_train_loader(cfg, data, world, device)
    val_shards = data.shards("val")
    test_shards = data.shards("test") if cfg.test_each_epoch else []
    if world.is_main:
        storage.makedirs(out)
        storage.write_text(storage.join(out, "config.json"), json.dumps(to_dict(cfg), indent=2))
        storage.remove(storage.join(out, STOPPED_FILE))
    storage.makedirs(storage.join(out, "ranks"))
    storage.write_text(storage.join(out, "ranks", f"rank-{world.rank}.pid"), str(os.getpid()))  # for operators

    steps_estimate = len(loader)  # epoch 0's batches per rank
    total_updates = max(1, cfg.epochs * steps_estimate // cfg.grad_accum)
    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg.model, len(data.classes), cfg.strategy).to(device)
    plugin = plugin_record(cfg.model)  # the checkpoint names its model, so evaluate/calibrate/serve rebuild it
    # fused on CPU too: one pass over all parameters (MiniLM: per-tensor took 3.1-7.6x as long, bench/minilm_step.py)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True)
    warmup = max(1, int(cfg.warmup_fraction * total_updates))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_updates, warmup))
    identity = {"location": storage.absolute(cfg.data), "fingerprint": data.fingerprint}
    step = 0
    if cfg.resume or cfg.resume_from:
        step = resume(cfg, world, spec, identity, model, optimizer, scheduler, loader)
    else:
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1))  # per-rank dropout streams
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    log = RunLog(out, world.rank, world.is_main)
    writer = Checkpointer(out, cfg.keep_checkpoints) if world.is_main else None
    if world.is_main:
        print(f"training on {len(loader.table)} samples, {world.size} rank(s) x batch {cfg.batch_size}, "
              f"{loader.num_workers} loader worker(s) per rank, device {device}", flush=True)

    def save(reason: str) -> None:
        rng = gather(checkpoint.rng_state(), world)  # the one collective a checkpoint costs the other ranks
        position = loader.state_dict()
        info = {"epoch": position["epoch"], "batches": position["batches"], "step": step}
        if writer is None:
            if hooks.on_checkpoint:
                hooks.on_checkpoint("", info)
            return
        state = {"model": checkpoint.snapshot(model), "optimizer": checkpoint.snapshot(optimizer),
                 "scheduler": scheduler.state_dict(), "epoch": position["epoch"], "step": step,
                 "loader": LoaderState.from_json(position).to_json(), "rng": rng, "config": to_dict(cfg),
                 "spec": spec.to_json(),
                 "classes": data.classes, "data": identity["location"], "dataset": identity, "model_plugin": plugin,
                 "world_size": world.size, "reason": reason}
        writer.save(state, step)
        if hooks.on_checkpoint:
            writer.wait()
            hooks.on_checkpoint(writer.last_path or storage.join(out, checkpoint.CHECKPOINT), info)

    row: dict[str, Any] = {}
    for epoch in range(loader.epoch, cfg.epochs):
        model.train()
        loader.set_epoch(epoch)
        plan, steps, start = loader.plan, len(loader), loader.batches_done
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
            if stopped:
                save(f"stopped by {stop.signal or 'a peer rank'}")
                return True
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and start + done < steps:
                save(f"every {cfg.checkpoint_every} steps")
            return False

        t0 = time.perf_counter()
        totals, step = train_steps(
            ddp, model, loader, max(0, steps - start), optimizer=optimizer, scheduler=scheduler,
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
        save("epoch end")  # the loader has moved to the next epoch
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
           scheduler, data_loader: ICPCLoader) -> int:
    """Load the checkpoint into the run and its loader (refusing a different run); returns the optimizer step."""
    state, where = checkpoint.latest(cfg.output, cfg.resume_from)
    if state is None:
        if world.is_main:
            print(f"--resume: no checkpoint at {where}; starting from scratch", flush=True)
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1))
        return 0
    check_spec(Spec.from_json(state["spec"]), spec, f"--resume from {where}")
    checkpoint.check_resume(state, {"config": to_dict(cfg), "dataset": identity}, where)
    model.load_state_dict(state["model"])
    implementation = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach")}  # as _train built it
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the saved groups carry the saving run's choice: keep this run's
        group.update(implementation)
    scheduler.load_state_dict(state["scheduler"])
    saved_world = len(state["rng"])
    position = {**(state.get("loader") or {"epoch": state["epoch"], "batches": 0}), "world_size": saved_world}
    data_loader.load_state_dict(position)
    loader = LoaderState.from_json(position)
    if saved_world == world.size:  # same world: every rank continues its own RNG stream and batches
        checkpoint.restore_rng(state["rng"][world.rank])
        how = "same world size: the run continues exactly"
    else:  # the rest of the epoch is re-planned for this world; new dropout streams
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1) + 104729 * (loader.epoch + 1) + loader.batches)
        how = (f"{saved_world} -> {world.size} ranks: the rest of epoch {loader.epoch + 1} is re-planned, each "
               f"untrained sample once")
    if world.is_main:
        print(f"resumed from {where} (written at {state.get('reason', 'an epoch end')}): epoch {loader.epoch + 1}, "
              f"batch {loader.batches}, optimizer step {state['step']}; {how}", flush=True)
    return int(state["step"])


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
