"""Benchmark: ICPC vs baseline training time per epoch, the arms interleaved in one run.

    .venv/bin/python bench/epoch_time.py --data runs/demo-data --repeats 3
    .venv/bin/python bench/epoch_time.py --data runs/demo-data --repeats 3 --arm "tokens:batch_tokens=3136"
    .venv/bin/python bench/epoch_time.py --data runs/s3 --repeats 3 --other "schema2=../main/.venv/bin/python@runs/s2"

Each repeat trains one epoch of every arm with the same two-process torchrun DDP setup (arms in
rotating order) and reads the epoch's training seconds from metrics.csv (start-up and validation
excluded). The arms are ``icpc`` (a level per sample), ``baseline`` (level 0 only) and any
``--arm NAME:KEY=VALUE,...`` (ICPC with those config overrides) and any ``--other NAME=PYTHON@DATA``
(ICPC run by another interpreter, e.g. another checkout's venv, on other data: code or data
layout before and after a change, interleaved). Reports the medians and the
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


def one_epoch(data: str, nproc: int, extra: list[str], python: str = sys.executable) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [python, "-m", "icpc.cli", "train", "--nproc-per-node", str(nproc), "--data", data,
               "--output", out, "--epochs", "1", *extra]
        subprocess.run(cmd, check=True, capture_output=True, cwd=out)   # not a checkout: each python imports its own
        with open(Path(out) / "metrics.csv") as f:
            return next(csv.DictReader(f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--repeats", type=int, default=3, help="rounds; every arm runs once per round")
    p.add_argument("--nproc-per-node", type=int, default=2, help="DDP processes")
    p.add_argument("--set", action="append", default=[], help="extra --set overrides for every arm")
    p.add_argument("--arm", action="append", default=[], help="NAME:KEY=VALUE,... an ICPC arm with overrides")
    p.add_argument("--other", action="append", default=[],
                   help="NAME=PYTHON@DATA: an ICPC arm run by another interpreter on other data")
    args = p.parse_args()
    common = [x for s in args.set for x in ("--set", s)]
    arms = {"icpc": common, "baseline": ["--baseline", *common]}
    for spec in args.arm:
        name, _, sets = spec.partition(":")
        arms[name] = [*common, *(x for kv in sets.split(",") if kv for x in ("--set", kv))]
    others = {}
    for spec in args.other:
        name, _, where = spec.partition("=")
        python, _, data = where.partition("@")
        others[name] = (python, data)
        arms[name] = common
    names = list(arms)
    times: dict[str, list[float]] = {n: [] for n in names}
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, data {args.data}, arms {arms}", flush=True)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            python, data = others.get(name, (sys.executable, args.data))
            row = one_epoch(data, args.nproc_per_node, arms[name], python)
            times[name].append(float(row["epoch_seconds"]))
            print(f"repeat {r + 1}/{args.repeats} {name:<10} {times[name][-1]:7.2f} s  ({row['steps']} steps, "
                  f"data wait {100 * float(row.get('data_wait', 0)):.1f}%)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nmedian epoch seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    for name in names:
        if name != "baseline":
            print(f"ratio {name}/baseline {med[name] / med['baseline']:.3f} over {args.repeats} interleaved rounds")
    for name in others:
        print(f"ratio icpc/{name} {med['icpc'] / med[name]:.3f} (this checkout on --data against {name})")


if __name__ == "__main__":
    main()
