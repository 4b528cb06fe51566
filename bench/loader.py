"""Benchmark: loader throughput with 0, 1 and 2 worker processes against what the model consumes, and the
data-wait share of real 2-rank training runs.

    .venv/bin/python bench/loader.py --data runs/demo-data --repeats 3

1. Loader: one rank's batches of an epoch plan (2 ranks, batch 64) through the trainer's own
   DataLoader (``make_loader``) with 0, 1 and 2 workers, no model: samples/s.
2. Model: forward + backward + AdamW step of the default model on real batches, one process, one
   torch thread (what one rank does on this 2-core machine with two ranks): samples/s.
3. Training: ``icpc train --nproc-per-node 2`` for one epoch with ``loader_workers`` 0 and 1; the
   data-wait share (the largest rank's time waiting for its next batch / its step time) from
   metrics.csv.
Arms alternate within each repeat; medians are reported. The machine is shared: read ratios.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from icpc.config import TrainConfig  # noqa: E402
from icpc.dataset import open_dataset  # noqa: E402
from icpc.modelio import build_model  # noqa: E402
from icpc.training.data import BatchDataset, PlanSampler, make_loader  # noqa: E402
from icpc.training.model import param_groups  # noqa: E402
from icpc.training.train import epoch_plan  # noqa: E402


def loader_rate(data, table, plan, workers: int) -> float:
    sampler = PlanSampler(rank=0)
    sampler.set_plan(plan)
    loader = make_loader(BatchDataset(table, data.spec, data.shared_positions, "consistent"), sampler, workers,
                         prefetch=4, pin_memory=False)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["labels"])
    return n / (time.perf_counter() - t0)


def model_rate(data, table, plan, steps: int = 60) -> float:
    torch.set_num_threads(1)
    cfg = TrainConfig()
    model = build_model(data.spec, cfg.model, len(data.classes))
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    ds = BatchDataset(table, data.spec, data.shared_positions, "consistent")
    sampler = PlanSampler(rank=0)
    sampler.set_plan(plan)
    batches = [ds[r] for _, r in zip(range(steps), sampler)]
    t0, n = time.perf_counter(), 0
    for b in batches:
        loss = torch.nn.functional.cross_entropy(model(b["tokens"], b["positions"], b["level"]), b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()
        n += len(b["labels"])
    return n / (time.perf_counter() - t0)


def train_wait(data: str, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", "2", "--data", data,
                        "--output", out, "--epochs", "1", "--set", f"loader_workers={workers}"],
                       check=True, capture_output=True)
        with open(Path(out) / "metrics.csv") as f:
            row = next(csv.DictReader(f))
    return float(row["data_wait"]), float(row["epoch_seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-training", action="store_true", help="only the loader and model rates")
    args = p.parse_args()
    data = open_dataset(args.data)
    table = data.table("train")
    plan = epoch_plan(TrainConfig(data=args.data), table, data.spec, 0, 2)
    rates: dict[str, list[float]] = {"loader w=0": [], "loader w=1": [], "loader w=2": [], "model": []}
    waits: dict[int, list[float]] = {0: [], 1: []}
    epoch_s: dict[int, list[float]] = {0: [], 1: []}
    for r in range(args.repeats):
        for w in ((0, 1, 2) if r % 2 == 0 else (2, 1, 0)):
            rates[f"loader w={w}"].append(loader_rate(data, table, plan, w))
        rates["model"].append(model_rate(data, table, plan))
        if not args.skip_training:
            for w in ((0, 1) if r % 2 == 0 else (1, 0)):
                wait, seconds = train_wait(args.data, w)
                waits[w].append(wait)
                epoch_s[w].append(seconds)
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items())
              + ("" if args.skip_training else
                 f"; data wait w=0 {100 * waits[0][-1]:.1f}%, w=1 {100 * waits[1][-1]:.1f}%"), flush=True)
    print("\nmedians (samples/s): " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in rates.items()))
    if not args.skip_training:
        for w in (0, 1):
            print(f"2-rank training, loader_workers={w}: data wait {100 * statistics.median(waits[w]):.1f}% of step "
                  f"time, epoch {statistics.median(epoch_s[w]):.1f} s")


if __name__ == "__main__":
    main()
