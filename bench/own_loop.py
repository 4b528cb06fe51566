"""Benchmark: training samples/s of examples/own_loop.py (a user's loop on icpc.ICPCLoader) against `icpc train`.

    .venv/bin/python bench/own_loop.py --data runs/demo-data --epochs 2 --repeats 3

Both arms train the same model (the built-in transformer, dim 96, depth 4) on the same data with
two torchrun DDP processes, the same batch size, seed and default loader settings; the arms
alternate, the first arm rotating per repeat. Samples/s = real training samples / seconds of the
epochs' step loops (start-up, evaluation and the epoch-end checkpoint excluded): from metrics.csv
(``epoch_seconds``, ``samples``) for `icpc train`, from the JSON line the example prints for the
example. Reports the medians and the ratio own loop / icpc train (goal: >= 0.95). The machine is
shared and noisy: read the ratio of medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def icpc_train(data: str, epochs: int, batch: int, nproc: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", str(nproc), "--data", data,
                        "--output", out, "--epochs", str(epochs), "--batch-size", str(batch)],
                       check=True, capture_output=True, cwd=REPO)
        with open(Path(out) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    return sum(int(r["samples"]) for r in rows) / sum(float(r["epoch_seconds"]) for r in rows)


def own_loop(data: str, epochs: int, batch: int, nproc: int) -> float:
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           str(REPO / "examples" / "own_loop.py"), "--data", data, "--epochs", str(epochs),
                           "--batch-size", str(batch)], check=True, capture_output=True, text=True, cwd=REPO)
    summary = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("{")))
    return summary["train_samples"] / summary["train_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=64, help="samples per rank and step (both arms)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each arm runs once per round")
    p.add_argument("--nproc-per-node", type=int, default=2, help="DDP processes")
    args = p.parse_args()
    arms = {"icpc_train": icpc_train, "own_loop": own_loop}
    names = list(arms)
    rates: dict[str, list[float]] = {n: [] for n in names}
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, data {args.data}, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.nproc_per_node} ranks", flush=True)
    for r in range(args.repeats):
        for name in names[r % 2:] + names[:r % 2]:
            rates[name].append(arms[name](args.data, args.epochs, args.batch_size, args.nproc_per_node))
            print(f"repeat {r + 1}/{args.repeats} {name:<10} {rates[name][-1]:8.1f} samples/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print("\nmedian samples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"own loop / icpc train: {med['own_loop'] / med['icpc_train']:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
