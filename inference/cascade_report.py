"""The figures a cascade is reported by (accuracy, tokens, cost, answering levels), from precomputed probabilities.

One function for calibration's check, ``icpc evaluate`` and the demo's summary, so the three report
the same numbers for the same thresholds and samples.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from icpc.inference.cascade import cascade_cost, simulate_cascade
from icpc.inference.thresholds import active_order


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


def tokens_tried(answered: np.ndarray, order: Sequence[int], tokens: np.ndarray) -> np.ndarray:
    """Per-sample tokens over every level tried up to the answering one; ``tokens`` is ``(levels, n)``."""
    rank = {level: i for i, level in enumerate(order)}
    level_rank = np.array([rank.get(level, len(order)) for level in range(len(tokens))])  # untried: never counted
    answer_rank = np.array([rank[int(a)] for a in answered])
    return (tokens * (level_rank[:, None] <= answer_rank[None, :])).sum(0)


def cascade_figures(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float], tokens: np.ndarray,
                    level_cost: Sequence[float] | None = None) -> dict[str, Any]:
    """The cascade with ``thresholds`` on ``probs`` ``(levels, n, C)``, against level 0 alone.

    ``tokens`` ``(levels, n)`` are each sample's tokens per level (text varies); ``level_cost`` a
    cost per level tried (serving ms), reported as ``cost_ratio`` when given. Returns samples,
    accuracy and level 0's, their difference, mean tokens and ``token_ratio``, the share of samples
    whose label differs from level 0's, mean levels tried and the share answered per level.
    """
    order = active_order(thresholds)
    preds, answered, tried = simulate_cascade(probs, order, thresholds)
    reference = np.asarray(probs[0]).argmax(1)
    accuracy, ref_accuracy = float((preds == labels).mean()), float((reference == labels).mean())
    mean_tokens = float(tokens_tried(answered, order, np.asarray(tokens)).mean())
    out = {"samples": int(len(labels)), "thresholds": [float(t) for t in thresholds], "order": order,
           "accuracy": accuracy, "reference_accuracy": ref_accuracy, "accuracy_delta": accuracy - ref_accuracy,
           "lost": float(((reference == labels) & (preds != labels)).mean()),
           "disagreement": float((preds != reference).mean()),
           "mean_tokens": mean_tokens, "token_ratio": mean_tokens / float(np.asarray(tokens[0]).mean()),
           "mean_levels_tried": float(tried.mean()),
           "answered": {str(lv): float((answered == lv).mean()) for lv in range(len(thresholds))}}
    if level_cost is not None:
        out["mean_cost"] = float(cascade_cost(answered, order, level_cost).mean())
        out["cost_ratio"] = out["mean_cost"] / level_cost[0]
    return out


def format_figures(name: str, f: dict[str, Any], cost: str = "") -> str:
    """One line: ``name: accuracy A (+d pts vs level 0) at T x the tokens[, C x the COST cost] (n samples)``."""
    extra = f", {f['cost_ratio']:.2f}x the {cost} cost" if cost and "cost_ratio" in f else ""
    return (f"{name}: accuracy {f['accuracy']:.4f} ({100 * f['accuracy_delta']:+.2f} pts vs level 0's "
            f"{f['reference_accuracy']:.4f}) at {f['token_ratio']:.2f}x the tokens of level 0{extra}; "
            f"lost {100 * f['lost']:.2f}%, disagree {100 * f['disagreement']:.2f}% ({f['samples']} samples)")
