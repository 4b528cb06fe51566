"""Benchmark: what a DDP step costs relative to level 0 as ranks are added, from the real epoch plan.

    .venv/bin/python bench/ddp_cost.py --data runs/demo-data --batch-size 64 --worlds 1,2,4,8,16,64

A DDP step lasts as long as its slowest rank. For each simulated world size W this builds the
trainer's own epoch plan (``training/plan.py``, the code ``icpc train`` runs) over the dataset's
real training keys and shards, takes per step the largest rank's cost (sum over its samples of
tokens, linear; or tokens squared, attention), sums over the epoch, and divides by the cost of a
level-0 epoch with the same per-rank batch (every sample at level 0, N/W samples per rank). The
ranks are simulated (this machine has 2 cores): the plan is exactly what W real ranks would run.
Also reports the steps per epoch, partial steps and weight-0 padding copies (what the plan adds to
keep every rank busy at the same level).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icpc.config import TrainConfig  # noqa: E402
from icpc.dataset import open_dataset  # noqa: E402
from icpc.training.plan import step_cost  # noqa: E402
from icpc.training.train import epoch_plan  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--batch-size", type=int, default=64, help="per rank (the demo's default)")
    p.add_argument("--worlds", default="1,2,4,8,16,64", help="world sizes to simulate")
    p.add_argument("--epochs", type=int, default=3, help="epochs averaged (each has its own draw)")
    p.add_argument("--output", help="write the table as JSON here")
    args = p.parse_args()
    data = open_dataset(args.data)
    table, spec = data.table("train"), data.spec
    cfg = TrainConfig(data=args.data, batch_size=args.batch_size)
    rows = []
    print(f"{len(table)} training samples, ladder tokens {[lv.tokens for lv in spec.ladder]}, batch "
          f"{args.batch_size} per rank")
    print(f"{'W':>4} {'linear':>8} {'quadratic':>10} {'steps':>6} {'partial':>8} {'padded':>7}")
    for world in (int(w) for w in args.worlds.split(",")):
        lin, quad, steps, partial, padded = [], [], [], [], []
        for epoch in range(args.epochs):
            plan = epoch_plan(cfg, table, spec, epoch, world)
            levels = np.zeros(len(table), dtype=np.int64)
            for s in range(plan.steps):
                levels[plan.rows[s]] = plan.levels[s]
            tokens = table.tokens[np.arange(len(table)), levels]
            per_rank0 = np.ceil(len(table) / world)       # a level-0 epoch: N/W samples per rank at level 0
            t0 = float(table.tokens[:, 0].mean())
            lin.append(step_cost(plan, tokens, 1).sum() / (per_rank0 * t0))
            quad.append(step_cost(plan, tokens, 2).sum() / (per_rank0 * t0 ** 2))
            steps.append(plan.steps)
            partial.append(plan.partial_steps())
            padded.append(plan.padded())
        row = {"world": world, "linear": float(np.mean(lin)), "quadratic": float(np.mean(quad)),
               "steps": float(np.mean(steps)), "partial_steps": float(np.mean(partial)),
               "padded": float(np.mean(padded))}
        rows.append(row)
        print(f"{world:>4} {row['linear']:>8.3f} {row['quadratic']:>10.3f} {row['steps']:>6.0f} "
              f"{row['partial_steps']:>8.1f} {row['padded']:>7.1f}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
