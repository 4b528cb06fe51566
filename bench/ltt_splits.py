"""Does Learn then Test keep its promise? Many random calibration/test splits of stored held-out predictions.

    icpc evaluate --checkpoint runs/demo/icpc/last.pt --split val  --output runs/demo/icpc/eval-val
    icpc evaluate --checkpoint runs/demo/icpc/last.pt --split test --output runs/demo/icpc/eval-test
    python bench/ltt_splits.py runs/demo/icpc/eval-val/probs.npz runs/demo/icpc/eval-test/probs.npz \\
        --calibration 400 --trials 1000 --epsilon 0.01 --delta 0.1 --out bench/results/ltt-splits.json

The pooled predictions (real per-level probabilities saved by ``icpc evaluate``) are split at random
``trials`` times: ``calibration`` samples calibrate (``inference/ltt.py``, the code ``icpc calibrate``
runs), the rest measure. Two ways to read "exceeded":

- ``split``: the chosen cascade's loss on the held-out rest is above epsilon (the issue's check; the
  rest is finite, so its own sampling noise adds violations the guarantee does not cover);
- ``population``: calibration samples drawn with replacement from the pool, and the loss measured
  on the whole pool, which is then exactly the population the guarantee speaks of.

Both are reported with a Clopper-Pearson interval, next to the naive choice (the cheapest
candidate whose calibration loss is at most epsilon, no test), and the saving (tokens vs level 0).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

import numpy as np

from icpc.inference.cascade_report import cascade_figures, evaluate_thresholds
from icpc.inference.ltt import (DEFAULT_GRID, candidate_path, cascade_losses, clopper_pearson, learn_then_test,
                                level0_only)


def load_pool(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probs ``(levels, n, C)``, labels ``(n,)``, tokens ``(levels, n)`` of several ``probs.npz``, concatenated."""
    parts = [np.load(f, allow_pickle=False) for f in files]
    return (np.concatenate([p["probs"] for p in parts], 1), np.concatenate([p["labels"] for p in parts]),
            np.concatenate([p["tokens"] for p in parts], 1))


def naive_choice(probs: np.ndarray, labels: np.ndarray, level_cost: Sequence[float], epsilon: float, loss: str,
                 paths: Sequence[str], grid: Sequence[float]) -> list[float]:
    """The cheapest candidate whose calibration loss is at most epsilon: selection with no test (what not to do)."""
    best, best_cost = None, level_cost[0]
    for path in paths:
        for thresholds in candidate_path(path, probs.shape[0], grid):
            if cascade_losses(probs, labels, thresholds, loss).mean() <= epsilon:
                cost = evaluate_thresholds(probs, labels, thresholds, level_cost)["mean_cost"]
                if cost < best_cost:
                    best, best_cost = thresholds, cost
    return best or level0_only(probs.shape[0])


def split_study(probs: np.ndarray, labels: np.ndarray, tokens: np.ndarray, calibration: int, trials: int,
                epsilon: float, delta: float, mode: str = "split", loss: str = "accuracy",
                paths: Sequence[str] = ("shared", "direct"), grid: Sequence[float] = DEFAULT_GRID,
                naive: bool = True, seed: int = 0) -> dict[str, Any]:
    """Calibrate on ``calibration`` samples ``trials`` times; count how often the chosen loss exceeds epsilon.

    ``mode`` "split": calibration drawn without replacement, loss measured on the rest; "population":
    drawn with replacement, loss measured on the whole pool. Costs are mean tokens per level.
    """
    rng = np.random.default_rng(seed)
    n = probs.shape[1]
    level_cost = [float(t) for t in tokens.mean(1)]
    key = "lost" if loss == "accuracy" else "disagreement"
    rows = []
    for _ in range(trials):
        if mode == "split":
            perm = rng.permutation(n)
            cal, test = perm[:calibration], perm[calibration:]
        else:
            cal, test = rng.integers(0, n, calibration), np.arange(n)
        found = learn_then_test(probs[:, cal], labels[cal], level_cost, epsilon, delta, loss, paths, grid)
        f = cascade_figures(probs[:, test], labels[test], found["thresholds"], tokens[:, test])
        row = {"certified": found["certified"], "loss": f[key], "token_ratio": f["token_ratio"],
               "accuracy_delta": f["accuracy_delta"]}
        if naive:
            g = cascade_figures(probs[:, test], labels[test],
                                naive_choice(probs[:, cal], labels[cal], level_cost, epsilon, loss, paths, grid),
                                tokens[:, test])
            row.update(naive_loss=g[key], naive_token_ratio=g["token_ratio"])
        rows.append(row)

    def rate(values: list[float]) -> dict[str, Any]:
        k = int(sum(v > epsilon + 1e-12 for v in values))
        lo, hi = clopper_pearson(k, len(values))
        return {"exceeded": k, "rate": k / len(values), "ci95": [lo, hi]}

    out = {"mode": mode, "pool": int(n), "calibration": calibration, "trials": trials, "epsilon": epsilon,
           "delta": delta, "loss": loss, "paths": list(paths),
           "certified_share": float(np.mean([r["certified"] for r in rows])),
           "ltt": {**rate([r["loss"] for r in rows]), "mean_loss": float(np.mean([r["loss"] for r in rows])),
                   "median_token_ratio": float(np.median([r["token_ratio"] for r in rows])),
                   "mean_token_ratio": float(np.mean([r["token_ratio"] for r in rows])),
                   "mean_accuracy_delta": float(np.mean([r["accuracy_delta"] for r in rows]))}}
    if naive:
        out["naive"] = {**rate([r["naive_loss"] for r in rows]),
                        "mean_token_ratio": float(np.mean([r["naive_token_ratio"] for r in rows]))}
    return out


def format_study(s: dict[str, Any]) -> str:
    lt = s["ltt"]
    lines = [f"{s['mode']}: {s['trials']} trials, {s['calibration']} of {s['pool']} samples calibrate, loss "
             f"{s['loss']}, epsilon {s['epsilon']:g}, delta {s['delta']:g}",
             f"  LTT: loss > epsilon in {lt['exceeded']}/{s['trials']} = {lt['rate']:.3f} (95% CI {lt['ci95'][0]:.3f}"
             f"-{lt['ci95'][1]:.3f}); saving certified in {100 * s['certified_share']:.0f}%; tokens "
             f"{lt['mean_token_ratio']:.3f}x level 0 (median {lt['median_token_ratio']:.3f}); accuracy "
             f"{100 * lt['mean_accuracy_delta']:+.2f} pts; mean loss {lt['mean_loss']:.4f}"]
    if "naive" in s:
        nv = s["naive"]
        lines.append(f"  naive (cheapest with calibration loss <= epsilon): exceeded {nv['exceeded']}/{s['trials']} = "
                     f"{nv['rate']:.3f} (95% CI {nv['ci95'][0]:.3f}-{nv['ci95'][1]:.3f}); tokens "
                     f"{nv['mean_token_ratio']:.3f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probs", nargs="+", help="probs.npz files written by icpc evaluate (pooled)")
    p.add_argument("--calibration", type=int, default=400, help="calibration samples per trial")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--loss", default="accuracy", choices=["accuracy", "disagreement"])
    p.add_argument("--paths", default="shared,direct", help="comma-separated candidate paths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-naive", action="store_true", help="skip the naive arm (4x the work of the LTT arm)")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    probs, labels, tokens = load_pool(args.probs)
    t0 = time.time()
    results = [split_study(probs, labels, tokens, args.calibration, args.trials, args.epsilon, args.delta, mode,
                           args.loss, args.paths.split(","), naive=not args.no_naive, seed=args.seed)
               for mode in ("split", "population")]
    for r in results:
        print(format_study(r))
    print(f"({time.time() - t0:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python bench/ltt_splits.py " + " ".join(args.probs), "args": vars(args),
                       "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
