"""``icpc train``: DDP training on ICPC shards with a fresh compression level per sample per epoch.

    torchrun --standalone --nproc-per-node 2 -m icpc.cli train --data runs/data --output runs/icpc
    icpc train --nproc-per-node 2 --data runs/data --output runs/base --baseline   # spawns torchrun

Each epoch every rank runs ``steps_per_epoch`` batches (the same count on every rank, so no DDP
hang); each batch holds one level. A checkpoint (model, optimizer, scheduler, epoch, step, RNG
state, resolved config, data spec) is written after every epoch; ``--resume`` continues from it.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from icpc.config import TrainConfig, to_dict
from icpc.contract import Spec, check_spec
from pipeline.shards import read_manifest, split_shards
from training.data import eval_batches, steps_per_epoch, train_batches
from training.distributed import World, setup, teardown
from training.model import TokenClassifier, param_groups, warmup_cosine

CHECKPOINT = "last.pt"
METRICS = "metrics.csv"


def build_model(spec: Spec, cfg: TrainConfig, num_classes: int) -> TokenClassifier:
    if cfg.model.kind == "minilm":  # pretrained text encoder (optional extra); same forward signature
        from training.minilm import MiniLMClassifier

        return MiniLMClassifier(spec, cfg.model, num_classes, cfg.strategy)
    return TokenClassifier(spec, cfg.model, num_classes, cfg.strategy)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train one with 'icpc train'")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(state: dict[str, Any], folder: Path, epoch: int) -> None:
    tmp = folder / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / CHECKPOINT)
    (folder / f"epoch-{epoch:03d}.pt").unlink(missing_ok=True)
    os.link(folder / CHECKPOINT, folder / f"epoch-{epoch:03d}.pt")


def train(cfg: TrainConfig, world: World, progress: bool = True) -> dict[str, Any]:
    """Train on ``cfg.data``; returns the last epoch's metrics (rank 0 also writes them)."""
    device, owns_group = setup(world)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world.local_size))
    manifest = read_manifest(cfg.data)
    spec = Spec.from_json(manifest["spec"])
    shards = split_shards(manifest, cfg.data, "train")
    val_shards = split_shards_or_empty(manifest, cfg.data, "val")
    out = Path(cfg.output)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    weights = [1.0] if cfg.baseline else (cfg.level_weights or [1.0] * len(spec.ladder))
    if len(weights) > len(spec.ladder):
        raise ValueError(f"level_weights has {len(weights)} entries but the ladder has {len(spec.ladder)} levels")
    steps = steps_per_epoch(manifest["counts"]["train"], world.size, cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    total_updates = cfg.epochs * steps // cfg.grad_accum

    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg, len(manifest["classes"])).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_fraction * total_updates))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_updates, warmup))
    start_epoch, step = 0, 0
    if cfg.resume and (out / CHECKPOINT).exists():
        state = load_checkpoint(out / CHECKPOINT)
        check_spec(Spec.from_json(state["spec"]), spec, f"--resume from {out / CHECKPOINT}")
        check_resume_config(state["config"], to_dict(cfg), out / CHECKPOINT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        if len(state["rng"]) == world.size:  # same world: every rank continues its own RNG stream
            torch.set_rng_state(state["rng"][world.rank]["torch"])
            random.setstate(_python_rng(state["rng"][world.rank]["python"]))
        else:
            if world.is_main:
                print(f"warning: resuming a {len(state['rng'])}-rank run with {world.size} ranks: the level "
                      f"draws stay the same, dropout streams and shard order do not", flush=True)
            torch.manual_seed(cfg.seed + 7919 * (world.rank + 1) + 104729 * start_epoch)
    else:
        torch.manual_seed(cfg.seed + 7919 * (world.rank + 1))  # per-rank dropout streams
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
    writer = _tensorboard(out) if world.is_main else None
    row: dict[str, Any] = {}

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        stream = train_batches(shards, spec, seed=cfg.seed, epoch=epoch, rank=world.rank, world=world.size,
                               batch_size=cfg.batch_size, weights=weights, strategy=cfg.strategy,
                               shuffle_buffer=cfg.shuffle_buffer, length_bucket=cfg.length_bucket)
        totals = {"loss": 0.0, "correct": 0, "samples": 0, "tokens": 0}
        levels_seen = [0] * len(spec.ladder)
        bar = _bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", progress and world.is_main)
        t0 = time.perf_counter()
        for i, batch in enumerate(itertools.islice(stream, steps)):
            tokens, positions, labels = (batch[k].to(device) for k in ("tokens", "positions", "labels"))
            mask = batch["padding_mask"].to(device) if batch["padding_mask"] is not None else None
            last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == steps
            sync = nullcontext() if last_micro or world.size == 1 else ddp.no_sync()
            with sync, autocast:
                logits = ddp(tokens, positions, batch["level"], mask)
                loss = F.cross_entropy(logits.float(), labels)
                (loss / cfg.grad_accum).backward()
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
            if writer and step % 10 == 0 and last_micro:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", level=batch["level"])
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        _log_rank(out, world, {"epoch": epoch + 1, "steps_run": i + 1, "samples": totals["samples"]})
        totals = _all_reduce(totals, device)
        levels_seen = [int(x) for x in _all_reduce(dict(enumerate(levels_seen)), device).values()]
        val = evaluate_split(model, val_shards, spec, cfg, world, device) if val_shards else {}
        row = {"epoch": epoch + 1, "step": step, "steps": steps,
               "train_loss": totals["loss"] / max(1, totals["samples"]),
               "train_acc": totals["correct"] / max(1, totals["samples"]),
               "val_loss": val.get("loss", float("nan")), "val_acc": val.get("acc", float("nan")),
               "lr": scheduler.get_last_lr()[0], "epoch_seconds": epoch_seconds,
               "samples": int(totals["samples"]), "tokens": int(totals["tokens"]),
               "levels": "/".join(map(str, levels_seen))}
        rng = _gather({"torch": torch.get_rng_state(), "python": random.getstate()}, world)
        if world.is_main:
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                "rng": rng,
                "config": to_dict(cfg), "spec": spec.to_json(), "classes": manifest["classes"],
                "data": str(Path(cfg.data).resolve()), "world_size": world.size,
            }, out, epoch + 1)
            _append_csv(out / METRICS, row)
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds"):
                writer.add_scalar(f"epoch/{k}", row[k], epoch + 1)
            print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
                  f"val_acc {row['val_acc']:.4f} ({epoch_seconds:.1f} s, {steps} steps/rank, "
                  f"levels {row['levels']})", flush=True)
    if writer:
        writer.close()
        print(f"wrote {out}/{{{CHECKPOINT}, {METRICS}, config.json, tb/}}", flush=True)
    del ddp  # release DDP's reducer (it holds the process group) before the group goes
    if owns_group:
        teardown()
    return row


# Config fields that shape the model or the data stream: a resumed run must keep them.
RESUME_FIELDS = ("seed", "baseline", "level_weights", "strategy", "batch_size", "grad_accum", "shuffle_buffer", "model")


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume with settings that would make a different run, naming both values."""
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current[k]!r}"
             for k in RESUME_FIELDS if saved.get(k) != current[k]]
    if diffs:
        raise ValueError(f"--resume from {path} would not continue the same run:\n  " + "\n  ".join(diffs)
                         + "\n  pass the checkpoint's values, or train into a new --output")


def split_shards_or_empty(manifest: dict[str, Any], folder: str, split: str) -> list[str]:
    return split_shards(manifest, folder, split) if manifest["counts"].get(split) else []


@torch.no_grad()
def evaluate_split(model: TokenClassifier, shards: list[str], spec: Spec, cfg: TrainConfig, world: World,
                   device: torch.device) -> dict[str, float]:
    """Level-0 loss and accuracy over ``shards``, samples dealt across ranks, summed over ranks."""
    model.eval()
    totals = {"loss": 0.0, "correct": 0, "samples": 0}
    for batch in eval_batches(shards, spec, 0, batch_size=cfg.batch_size, strategy=cfg.strategy,
                              rank=world.rank, world=world.size):
        labels = batch["labels"].to(device)
        mask = batch["padding_mask"].to(device) if batch["padding_mask"] is not None else None
        logits = model(batch["tokens"].to(device), batch["positions"].to(device), 0, mask).float()
        totals["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        totals["correct"] += (logits.argmax(1) == labels).sum().item()
        totals["samples"] += len(labels)
    totals = _all_reduce(totals, device)
    return {"loss": totals["loss"] / max(1, totals["samples"]), "acc": totals["correct"] / max(1, totals["samples"])}


def _all_reduce(values: dict, device: torch.device) -> dict:
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def _gather(obj: Any, world: World) -> list[Any]:
    """``obj`` of every rank, in rank order (on every rank)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def _log_rank(out: Path, world: World, record: dict[str, Any]) -> None:
    """Each rank appends what it actually ran to ranks/rank-R.jsonl (checks equal step counts)."""
    folder = out / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"rank-{world.rank}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _python_rng(state: Any) -> tuple:
    """torch.load returns the saved tuple as lists in places; random.setstate wants tuples."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)
