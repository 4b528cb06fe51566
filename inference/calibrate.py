"""``icpc calibrate``: per-level cascade thresholds for an accuracy target at the lowest measured cost.

    icpc calibrate --checkpoint runs/icpc/last.pt                 # val split, within 0.3 points of level 0
    icpc calibrate --checkpoint runs/icpc/last.pt --tolerance 0.01 --cost tokens

The search is pure numpy over precomputed probabilities (``search_thresholds``): a sweep of one
shared threshold, then coordinate descent on each level's own threshold. A threshold above 1
takes a level out of the cascade (it could never answer, so the server does not try it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from icpc import storage
from icpc.inference.cascade import cascade_cost, cascade_order, simulate_cascade
from icpc.reports import save_figure, write_json

THRESHOLDS_FILE = "thresholds.json"
PLOT_FILE = "calibrate.png"
OFF = 1.01          # a threshold no softmax probability reaches: the level is skipped
MAX_ROUNDS = 10     # coordinate-descent passes over the levels (it converges in 2-3 here)
# Candidate thresholds: every 0.05, denser near 1 where a trained model's softmax scores pile up.
DEFAULT_GRID = [round(0.05 * i, 2) for i in range(20)] + [0.97, 0.98, 0.99, 0.995, 0.999]


@dataclass
class CalibrateConfig:
    """``icpc calibrate``: choose thresholds on held-out data, write them beside the checkpoint."""

    checkpoint: str = "runs/train/last.pt"
    data: str = ""                    # dataset folder; "" = the one the checkpoint was trained on
    split: str = "val"                # held-out split the thresholds are chosen on
    check_split: str = "test"         # split the chosen thresholds are then reported on ("" = none)
    tolerance: float = 0.003          # accuracy the cascade may lose against level 0 (0.003 = 0.3 points)
    cost: str = "ms"                  # per-level cost: "ms" (measured forward ms per sample, batched) or "tokens"
    grid: list[float] = field(default_factory=lambda: DEFAULT_GRID.copy())  # candidate thresholds of each level
    output: str = ""                  # folder for thresholds.json and calibrate.png; "" = the checkpoint's
    batch_size: int = 256             # evaluation batch
    threads: int = 0                  # torch threads; 0 = all cores
    limit: int = 0                    # use at most this many samples per split (0 = all)

    def validate(self) -> list[str]:
        errors = []
        if self.split not in ("train", "val", "test"):
            errors.append(f"split={self.split!r}: choose val (or train, test)")
        if self.check_split not in ("", "train", "val", "test"):
            errors.append(f"check_split={self.check_split!r}: choose test, val, train or ''")
        if not 0 <= self.tolerance < 1:
            errors.append(f"tolerance={self.tolerance}: must be in [0, 1) (0.003 = 0.3 accuracy points)")
        if self.cost not in ("ms", "tokens"):
            errors.append(f"cost={self.cost!r}: choose ms or tokens")
        if not self.grid or any(not 0 <= t <= 1 for t in self.grid):
            errors.append(f"grid={self.grid}: needs values in [0, 1]")
        if self.batch_size <= 0:
            errors.append(f"batch_size={self.batch_size}: must be positive")
        return errors


# ----------------------------------------------------------------------------- pure core


def active_order(thresholds: Sequence[float]) -> list[int]:
    """Levels the cascade tries, most compressed first: those with a threshold <= 1, and level 0."""
    return [lv for lv in cascade_order(len(thresholds)) if lv == 0 or thresholds[lv] <= 1.0]


def check_thresholds(values: Any, num_levels: int) -> list[str]:
    """Errors of a thresholds list: one number >= 0 per level (index = level)."""
    if not isinstance(values, (list, tuple)) or len(values) != num_levels:
        return [f"{values!r} must be a list of {num_levels} numbers, one per level (index = level)"]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values):
        return [f"{list(values)} must all be numbers >= 0 (above 1 turns a level off)"]
    return []


def load_thresholds(path: str | os.PathLike, num_levels: int) -> list[float]:
    """Per-level thresholds from a calibration file (``{"thresholds": [...]}``)."""
    p = str(path)
    if not storage.exists(p):
        raise FileNotFoundError(f"thresholds file {p} not found; run 'icpc calibrate --checkpoint ...' "
                                f"or pass --thresholds / --set set_thresholds=[...]")
    values = json.loads(storage.read_text(p)).get("thresholds")
    if errors := check_thresholds(values, num_levels):
        raise ValueError(f"{p}: thresholds " + "; ".join(errors))
    return [float(v) for v in values]


def evaluate_thresholds(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float],
                        level_cost: Sequence[float]) -> dict[str, Any]:
    """Accuracy, mean cost and answering levels of the cascade over ``probs`` ``(levels, n, C)``."""
    order = active_order(thresholds)
    preds, answered, tried = simulate_cascade(probs, order, thresholds)
    return {"thresholds": [float(t) for t in thresholds], "order": order,
            "accuracy": float((preds == labels).mean()),
            "mean_cost": float(cascade_cost(answered, order, level_cost).mean()),
            "mean_levels_tried": float(tried.mean()),
            "answered": {str(lv): float((answered == lv).mean()) for lv in range(len(thresholds))}}


def search_thresholds(probs: np.ndarray, labels: np.ndarray, level_cost: Sequence[float], tolerance: float,
                      grid: Sequence[float]) -> dict[str, Any]:
    """The cheapest per-level thresholds whose accuracy is at least level 0's minus ``tolerance``.

    Starts from level 0 alone (always feasible), takes the cheapest feasible shared threshold of
    ``grid``, then improves one level at a time over ``grid`` and OFF until nothing gets cheaper.
    Returns the chosen point (``evaluate_thresholds`` fields) plus ``reference_accuracy``,
    ``min_accuracy`` and the ``shared`` sweep.
    """
    levels = probs.shape[0]
    reference = float((probs[0].argmax(1) == labels).mean())
    floor = reference - tolerance - 1e-12
    candidates = sorted({float(t) for t in grid} | {OFF})

    def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
        if a["accuracy"] < floor:
            return False
        return a["mean_cost"] < b["mean_cost"] - 1e-12 or (
            abs(a["mean_cost"] - b["mean_cost"]) <= 1e-12 and a["accuracy"] > b["accuracy"])

    best = evaluate_thresholds(probs, labels, [0.0] + [OFF] * (levels - 1), level_cost)
    shared = []
    for t in candidates:
        point = evaluate_thresholds(probs, labels, [0.0] + [t] * (levels - 1), level_cost)
        shared.append(point)
        if better(point, best):
            best = point
    for _ in range(MAX_ROUNDS):
        start = best
        for level in range(1, levels):
            for t in candidates:
                trial = list(best["thresholds"])
                trial[level] = t
                point = evaluate_thresholds(probs, labels, trial, level_cost)
                if better(point, best):
                    best = point
        if best is start:
            break
    return {**best, "reference_accuracy": reference, "min_accuracy": reference - tolerance, "shared": shared}


# ----------------------------------------------------------------------------- the job


def calibrate(cfg: CalibrateConfig, progress: bool = True) -> dict[str, Any]:
    """Measure per-level probabilities and cost, search, write thresholds.json and calibrate.png."""
    import torch

    from icpc.config import EvalConfig, to_dict
    from icpc.contract import Spec, check_spec
    from icpc.dataset import read_manifest, split_shards
    from icpc.inference.evaluate import predict_level
    from icpc.modelio import load_model

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    model, spec, state = load_model(cfg.checkpoint)
    data = cfg.data or state["data"]
    manifest = read_manifest(data)
    check_spec(spec, Spec.from_json(manifest["spec"]), f"calibrate {cfg.checkpoint} on {data}")
    ecfg = EvalConfig(batch_size=cfg.batch_size, limit=cfg.limit)

    def level_probs(split: str) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
        """(probs (levels, n, C), labels (n,), forward ms per sample, mean tokens per sample) per level.

        Mean tokens are counted per sample (text levels have no fixed count; the ladder holds maxima).
        """
        shards = split_shards(manifest, data, split)
        runs = [predict_level(model, shards, spec, lv, ecfg, model.strategy) for lv in range(len(spec.ladder))]
        if any(r["keys"] != runs[0]["keys"] for r in runs):
            raise RuntimeError(f"levels disagree on the {split} sample set; the shards are inconsistent")
        ms = [1000 * r["seconds"] / len(r["labels"]) for r in runs]
        return np.stack([r["probs"] for r in runs]), runs[0]["labels"], ms, [float(r["tokens"].mean()) for r in runs]

    # Batched ms over the whole split, not batch-1 latency: the server batches, and on a shared CPU
    # a few hundred batch-1 timings are too noisy to rank levels by.
    probs, labels, ms, tokens = level_probs(cfg.split)
    level_cost = ms if cfg.cost == "ms" else tokens
    found = search_thresholds(probs, labels, level_cost, cfg.tolerance, cfg.grid)
    ref_cost = level_cost[0]
    levels = [{"level": i, "name": lv.name, "tokens": tokens[i], "cost": level_cost[i], "ms_per_sample": ms[i],
               "accuracy": float((probs[i].argmax(1) == labels).mean())} for i, lv in enumerate(spec.ladder)]
    chosen = {k: v for k, v in found.items() if k != "shared"}
    report: dict[str, Any] = {
        "thresholds": chosen["thresholds"], "order": chosen["order"],
        "target": f"{cfg.split} accuracy >= level 0's - {cfg.tolerance}", "cost": cfg.cost,
        "level_cost": level_cost, "levels": levels, "samples": int(len(labels)),
        "checkpoint": str(cfg.checkpoint), "data": str(data), "split": cfg.split,
        cfg.split: _summary(chosen, ref_cost, probs, labels, tokens),
        "shared": [{**s, "cost_ratio": s["mean_cost"] / ref_cost} for s in found["shared"]],
        "config": to_dict(cfg),
    }
    if cfg.check_split and cfg.check_split != cfg.split and manifest["counts"].get(cfg.check_split):
        cprobs, clabels, _, _ = level_probs(cfg.check_split)
        check = evaluate_thresholds(cprobs, clabels, chosen["thresholds"], level_cost)
        check["reference_accuracy"] = float((cprobs[0].argmax(1) == clabels).mean())
        report[cfg.check_split] = _summary(check, ref_cost, cprobs, clabels, tokens)
    out = cfg.output or storage.parent(cfg.checkpoint)
    storage.makedirs(out)
    write_json(storage.join(out, THRESHOLDS_FILE), report)
    plot(report, storage.join(out, PLOT_FILE))
    report["output"] = out
    return report


def _summary(point: dict[str, Any], ref_cost: float, probs: np.ndarray, labels: np.ndarray,
             tokens: list[float]) -> dict[str, Any]:
    token_cost = evaluate_thresholds(probs, labels, point["thresholds"], tokens)["mean_cost"]
    return {"samples": int(len(labels)), "accuracy": point["accuracy"],
            "reference_accuracy": point["reference_accuracy"],
            "accuracy_delta": point["accuracy"] - point["reference_accuracy"],
            "mean_cost": point["mean_cost"], "cost_ratio": point["mean_cost"] / ref_cost,
            "token_ratio": token_cost / tokens[0], "mean_levels_tried": point["mean_levels_tried"],
            "answered": point["answered"]}


def plot(report: dict[str, Any], location: str) -> None:
    """Accuracy against cost relative to level 0: single levels, the shared sweep, the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, levels, ref = report["split"], report["levels"], report["levels"][0]["cost"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([lv["cost"] / ref for lv in levels], [lv["accuracy"] for lv in levels], "o", label="single level")
    for lv in levels:
        ax.annotate(f"L{lv['level']}", (lv["cost"] / ref, lv["accuracy"]), textcoords="offset points", xytext=(4, 4))
    ax.plot([s["cost_ratio"] for s in report["shared"]], [s["accuracy"] for s in report["shared"]], ".",
            alpha=0.6, label="cascade, one shared threshold")
    chosen = report[split]
    ax.plot([chosen["cost_ratio"]], [chosen["accuracy"]], "r*", ms=14, label="calibrated (per level)")
    ax.axhline(chosen["reference_accuracy"] - report["config"]["tolerance"], color="grey", ls=":", label="target")
    ax.set_xlabel(f"mean cost ({report['cost']}) relative to level 0")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(f"cascade calibration ({report['samples']} {split} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, location)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{'level':<12}{'tokens':>7}{r['cost']:>9}{'accuracy':>10}"]
    for lv in r["levels"]:
        lines.append(f"L{lv['level']} {lv['name']:<9}{lv['tokens']:>7}{lv['cost']:>9.3f}{lv['accuracy']:>10.4f}")
    lines.append(f"thresholds {r['thresholds']} (order {r['order']}; > 1 = level skipped)")
    for split in ("val", "test", "train"):
        if split in r:
            s = r[split]
            ms = f"{s['cost_ratio']:.2f}x the ms, " if r["cost"] == "ms" else ""
            lines.append(f"{split}: accuracy {s['accuracy']:.4f} ({100 * s['accuracy_delta']:+.2f} pts vs L0) at "
                         f"{ms}{s['token_ratio']:.2f}x the tokens of L0 ({s['samples']} samples)")
    lines.append(f"wrote {r['output']}/{{{THRESHOLDS_FILE}, {PLOT_FILE}}}")
    return "\n".join(lines)
