"""Benchmark: ICPC vs baseline training time per epoch, interleaved A/B in one run.

    .venv/bin/python bench/epoch_time.py --data runs/demo/data --repeats 3

Each repeat trains one epoch of ICPC (levels drawn per sample) and one of the baseline (level 0
only) with the same two-process torchrun DDP setup, alternating the order, and reads the epoch's
training seconds from metrics.csv (startup and validation excluded). Reports the medians and the
ratio of medians. The machine is shared and noisy: read the ratio, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one_epoch(data: str, baseline: bool, nproc: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", str(nproc), "--data", data,
               "--output", out, "--epochs", "1", *(["--baseline"] if baseline else []), *extra]
        subprocess.run(cmd, check=True, capture_output=True)
        with open(Path(out) / "metrics.csv") as f:
            return float(next(csv.DictReader(f))["epoch_seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--repeats", type=int, default=3, help="A/B pairs")
    p.add_argument("--nproc-per-node", type=int, default=2, help="DDP processes")
    p.add_argument("--set", action="append", default=[], help="extra --set overrides for icpc train")
    args = p.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    times: dict[str, list[float]] = {"icpc": [], "baseline": []}
    for r in range(args.repeats):
        order = ["icpc", "baseline"] if r % 2 == 0 else ["baseline", "icpc"]
        for mode in order:
            times[mode].append(one_epoch(args.data, mode == "baseline", args.nproc_per_node, extra))
            print(f"repeat {r + 1}/{args.repeats} {mode:<8} {times[mode][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian epoch seconds: ICPC {med['icpc']:.2f}, baseline {med['baseline']:.2f}; "
          f"ratio ICPC/baseline {med['icpc'] / med['baseline']:.3f} over {args.repeats} interleaved pairs")


if __name__ == "__main__":
    main()
