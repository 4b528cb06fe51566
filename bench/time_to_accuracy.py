"""Benchmark: level-0 test accuracy against training time and tokens, ICPC arms against the baseline, over seeds.

    .venv/bin/python bench/time_to_accuracy.py --data runs/demo-data --seeds 0,1,2 \
        --arm "baseline:8:baseline=true" --arm "baseline-5:5:baseline=true" \
        --arm "icpc:8:" --arm "icpc-anneal:8:level_weights_end=[1];anneal_start=0.5" --output bench/results/tta-image

Every arm is ``NAME:EPOCHS:KEY=VALUE;KEY=VALUE`` (``icpc train`` config overrides); the first arm is the
reference (the baseline). For each seed the arms run in a rotating order (interleaved, so machine
load falls on all of them), each a 2-rank ``icpc train`` with ``test_each_epoch``, and the run's
metrics.csv gives per epoch the training seconds, tokens processed and level-0 test accuracy.
Writes ``results.json``, ``table.md`` (mean and 95% t-interval over seeds of the final accuracy,
training seconds and tokens; the paired difference to the reference per seed, at the end and at
the arm's training time on the reference's curve, and to the baseline arm nearest in training time: put
a shorter baseline arm in the study to compare ICPC with a baseline given the same time and its own
whole schedule) and
``curves.png`` (accuracy against cumulative training time and tokens, mean over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# two-sided 95% Student t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width nan for one value."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), T95.get(len(v) - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(len(v))


def run_arm(data: str, epochs: int, sets: list[str], seed: int, nproc: int, common: list[str], log: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", str(nproc), "--data", data,
               "--output", out, "--epochs", str(epochs), "--set", f"seed={seed}", "--set", "test_each_epoch=true",
               *(x for s in [*common, *sets] for x in ("--set", s))]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            log.write_text(f"{' '.join(cmd)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
            raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}; whole log in {log}):\n"
                             f"{proc.stderr[-3000:]}")
        with open(Path(out) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    return {"seconds": [float(r["epoch_seconds"]) for r in rows], "tokens": [int(r["tokens"]) for r in rows],
            "test_acc": [float(r["test_acc"]) for r in rows], "val_acc": [float(r["val_acc"]) for r in rows],
            "levels": [r["levels"] for r in rows], "wall": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--arm", action="append", required=True, help="NAME:EPOCHS:KEY=VALUE;... (first = reference)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nproc-per-node", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="overrides for every arm")
    p.add_argument("--output", required=True, help="folder for results.json, table.md, curves.png")
    args = p.parse_args()
    arms = {}
    for spec in args.arm:
        name, epochs, sets = (spec.split(":", 2) + [""])[:3]
        arms[name] = (int(epochs), [kv for kv in sets.split(";") if kv])
    names, seeds = list(arms), [int(s) for s in args.seeds.split(",")]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    results: dict[str, dict[int, dict]] = {n: {} for n in names}
    done = out / "results.json"
    if done.exists():  # continue an interrupted study: runs already recorded are kept
        saved = json.loads(done.read_text())
        results.update({n: {int(k): v for k, v in saved["runs"].get(n, {}).items()} for n in names})
        started = datetime.fromisoformat(saved["started"])
    for i, seed in enumerate(seeds):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            if seed in results[name]:
                continue
            epochs, sets = arms[name]
            results[name][seed] = run_arm(args.data, epochs, sets, seed, args.nproc_per_node, args.set,
                                         out / f"failed-{name}-seed{seed}.log")
            r = results[name][seed]
            print(f"seed {seed} {name:<14} test acc {r['test_acc'][-1]:.4f} in {sum(r['seconds']):.1f} s of training "
                  f"({sum(r['tokens']) / 1e6:.1f} M tokens)", flush=True)
            done.write_text(json.dumps({"arms": {n: list(a) for n, a in arms.items()}, "runs": results,
                                        "started": started.isoformat(), "data": args.data}, indent=1))
    write_table(out, arms, results, seeds, started)
    plot(out, names, results)


def write_table(out: Path, arms, results, seeds, started) -> None:
    ref = next(iter(arms))
    lines = [f"Measured {started:%Y-%m-%d %H:%M} UTC, seeds {seeds}; mean and 95% t-interval over seeds; "
             f"differences paired by seed against `{ref}`.", "",
             "| arm | epochs | L0 test accuracy | training s | x time | M tokens | x tokens | accuracy - ref (pts) "
             "| accuracy - ref at equal time (pts) | accuracy - nearest-time baseline arm (pts) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ref_time = np.mean([sum(results[ref][s]["seconds"]) for s in seeds])
    ref_tokens = np.mean([sum(results[ref][s]["tokens"]) for s in seeds])
    for name, (epochs, _) in arms.items():
        acc = [results[name][s]["test_acc"][-1] for s in seeds]
        secs = [sum(results[name][s]["seconds"]) for s in seeds]
        toks = [sum(results[name][s]["tokens"]) / 1e6 for s in seeds]
        diff = [100 * (results[name][s]["test_acc"][-1] - results[ref][s]["test_acc"][-1]) for s in seeds]
        (a, da), (t, dt), (k, _) = interval(acc), interval(secs), interval(toks)
        same_time = [100 * (results[name][s]["test_acc"][-1] - accuracy_at(results[ref][s], sum(results[name][s]["seconds"])))
                     for s in seeds]
        (dm, dd), (em, ed) = interval(diff), interval(same_time)
        lines.append(f"| {name} | {epochs} | {a:.4f} ± {da:.4f} | {t:.0f} ± {dt:.0f} | {t / ref_time:.2f} | {k:.1f} | "
                     f"{k * 1e6 / ref_tokens:.2f} | {'' if name == ref else f'{dm:+.2f} ± {dd:.2f}'} | "
                     f"{'' if name == ref else f'{em:+.2f} ± {ed:.2f}'} | {versus_nearest_baseline(name, arms, results, seeds)} |")
    lines += ["", "Equal time: the reference run's accuracy at the arm's training seconds, linear between its epoch ends "
              "(within its own schedule, whose learning rate has not decayed there yet; capped at its last epoch).",
              "Nearest-time baseline arm: the paired difference to the baseline arm (`baseline=true`) whose mean "
              "training time is closest to this arm's, a baseline trained with its own whole schedule in about the "
              "same time (the fair equal-time comparison when such an arm is in the study)."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def versus_nearest_baseline(name: str, arms, results, seeds) -> str:
    """``other: mean ± half-width`` (pts, paired by seed) against the baseline arm nearest in mean training time."""
    mean_time = {n: np.mean([sum(results[n][s]["seconds"]) for s in seeds]) for n in arms}
    baselines = [n for n, (_, sets) in arms.items() if "baseline=true" in sets and n != name]
    if "baseline=true" in arms[name][1] or not baselines:
        return ""
    other = min(baselines, key=lambda n: abs(mean_time[n] - mean_time[name]))
    m, d = interval([100 * (results[name][s]["test_acc"][-1] - results[other][s]["test_acc"][-1]) for s in seeds])
    return f"{other} ({mean_time[other] / mean_time[name]:.2f}x this arm's time): {m:+.2f} ± {d:.2f}"


def accuracy_at(run: dict, seconds: float) -> float:
    """A run's level-0 test accuracy after ``seconds`` of training (linear between epoch ends)."""
    return float(np.interp(seconds, np.cumsum(run["seconds"]), run["test_acc"]))


def plot(out: Path, names, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        runs = list(results[name].values())
        n = min(len(r["seconds"]) for r in runs)
        t = np.mean([np.cumsum(r["seconds"][:n]) for r in runs], axis=0)
        k = np.mean([np.cumsum(r["tokens"][:n]) for r in runs], axis=0) / 1e6
        acc = np.mean([r["test_acc"][:n] for r in runs], axis=0)
        axes[0].plot(t, acc, "o-", label=name)
        axes[1].plot(k, acc, "o-", label=name)
    axes[0].set_xlabel("training time (s, 2 ranks, mean over seeds)")
    axes[1].set_xlabel("tokens processed (millions)")
    for ax in axes:
        ax.set_ylabel("level-0 test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)


if __name__ == "__main__":
    main()
