"""Benchmark: which position strategy works best? Train ICPC once per strategy, evaluate every level.

    .venv/bin/python bench/strategies.py --data runs/demo/data --epochs 4 --out runs/strategies

DESIGN contract 2 says which strategy is best is a measured result: consistent (reference cell of
each token's centre), corner (the authors' top-left sub-grid), renumber (0..n-1) and interpolate
(FlexiViT-style resized table). Same data, seed, model and schedule for each; prints a markdown
table of test accuracy per level and writes it to OUT/strategies.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from icpc.contract import STRATEGIES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--out", default="runs/strategies", help="folder for one training run per strategy")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run")
    p.add_argument("--nproc-per-node", type=int, default=2, help="DDP processes")
    p.add_argument("--set", action="append", default=[], help="extra --set overrides for icpc train")
    args = p.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    rows = {}
    for strategy in STRATEGIES:
        out = Path(args.out) / strategy
        icpc = [sys.executable, "-m", "icpc.cli"]
        subprocess.run([*icpc, "train", "--nproc-per-node", str(args.nproc_per_node), "--data", args.data,
                        "--output", str(out), "--epochs", str(args.epochs), "--strategy", strategy, *extra],
                       check=True, capture_output=True)
        subprocess.run([*icpc, "evaluate", "--checkpoint", str(out / "last.pt")], check=True, capture_output=True)
        report = json.loads((out / "eval" / "eval.json").read_text())
        rows[strategy] = report["levels"]
        print(strategy, [round(lv["accuracy"], 4) for lv in report["levels"]], flush=True)
    levels = next(iter(rows.values()))
    lines = ["| strategy | " + " | ".join(f"L{lv['level']} {lv['name']}" for lv in levels) + " | mean |",
             "|---|" + "---|" * (len(levels) + 1)]
    for strategy, lv in rows.items():
        accs = [x["accuracy"] for x in lv]
        lines.append(f"| {strategy} | " + " | ".join(f"{a:.4f}" for a in accs) + f" | {sum(accs) / len(accs):.4f} |")
    table = "\n".join(lines)
    (Path(args.out) / "strategies.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
