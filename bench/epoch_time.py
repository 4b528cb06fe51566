"""Benchmark: ICPC vs baseline training time per epoch, the arms interleaved in one run.

    .venv/bin/python bench/epoch_time.py --data runs/demo-data --repeats 3
    .venv/bin/python bench/epoch_time.py --data runs/demo-data --repeats 3 --arm "tokens:batch_tokens=3136"

Each repeat trains one epoch of every arm with the same two-process torchrun DDP setup (arms in
rotating order) and reads the epoch's training seconds from metrics.csv (start-up and validation
excluded). The arms are ``icpc`` (a level per sample), ``baseline`` (level 0 only) and any
``--arm NAME:KEY=VALUE,...`` (ICPC with those config overrides). Reports the medians and the
ratios of medians to the baseline. The machine is shared and noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path


def one_epoch(data: str, nproc: int, extra: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", str(nproc), "--data", data,
               "--output", out, "--epochs", "1", *extra]
        subprocess.run(cmd, check=True, capture_output=True)
        with open(Path(out) / "metrics.csv") as f:
            return next(csv.DictReader(f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--repeats", type=int, default=3, help="rounds; every arm runs once per round")
    p.add_argument("--nproc-per-node", type=int, default=2, help="DDP processes")
    p.add_argument("--set", action="append", default=[], help="extra --set overrides for every arm")
    p.add_argument("--arm", action="append", default=[], help="NAME:KEY=VALUE,... an ICPC arm with overrides")
    args = p.parse_args()
    common = [x for s in args.set for x in ("--set", s)]
    arms = {"icpc": common, "baseline": ["--baseline", *common]}
    for spec in args.arm:
        name, _, sets = spec.partition(":")
        arms[name] = [*common, *(x for kv in sets.split(",") if kv for x in ("--set", kv))]
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, data {args.data}, arms {arms}", flush=True)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            row = one_epoch(args.data, args.nproc_per_node, arms[name])
            times[name].append(float(row["epoch_seconds"]))
            print(f"repeat {r + 1}/{args.repeats} {name:<10} {times[name][-1]:7.2f} s  ({row['steps']} steps, "
                  f"data wait {100 * float(row.get('data_wait', 0)):.1f}%)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nmedian epoch seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    for name in names:
        if name != "baseline":
            print(f"ratio {name}/baseline {med[name] / med['baseline']:.3f} over {args.repeats} interleaved rounds")


if __name__ == "__main__":
    main()
