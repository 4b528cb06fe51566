"""Learn then Test: cascade thresholds whose loss against level 0 is certified, as pure numpy.

The guarantee (Angelopoulos, Bates, Candes, Jordan, Lei 2021, "Learn then Test"; for early exits
Jazbec et al. 2024, "Fast yet Safe"): if the calibration samples and the samples served later are
exchangeable (drawn from one distribution), then with probability at least ``1 - delta`` over the
calibration data, every certified threshold vector has an expected loss of at most ``epsilon``.

- **Loss** (per sample, 0 or 1, of the cascade against level 0 alone):
  ``accuracy`` = level 0 is right and the cascade is wrong (the default: the accuracy the cascade
  loses; gains elsewhere are not credited, which keeps the loss 0/1 so the exact binomial test
  applies) or ``disagreement`` = the cascade's label differs from level 0's (needs no labels, so
  unlabelled traffic can calibrate; it bounds the ``accuracy`` loss from above, so it certifies less).
  Either bounds the accuracy drop: drop = P(lost) - P(gained) <= P(lost) <= P(disagree).
- **p-value** of H0 "loss > epsilon": the binomial tail ``P(Bin(n, epsilon) <= k)`` for ``k``
  losses among ``n`` samples (exact for 0/1 losses; the Hoeffding-Bentkus bound is looser by e).
  The net accuracy difference (-1/0/+1) would need a bound on a range of 2: at n = 400 and
  delta = 0.1, Hoeffding certifies nothing unless the cascade is 11 points *better* than level 0.
- **Multiple testing**: candidates are tested along fixed paths, most conservative first, and a
  path stops at its first candidate that is not rejected (fixed-sequence testing: no correction
  within a path). Several paths share ``delta`` (Bonferroni: ``delta / paths`` each).
- **Choice**: the cheapest certified candidate by mean cost on the calibration data; when none is
  certified, level 0 alone (loss 0 by construction).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from icpc.inference.cascade import cascade_cost, simulate_cascade
from icpc.inference.thresholds import OFF, active_order

LOSSES = ("accuracy", "disagreement")
PATHS = ("shared", "direct")
# Shared thresholds tried from 1 down: dense near 1, where a trained model's top softmax scores pile up.
# Fixed-sequence testing pays nothing for a longer path, only for where it stops.
DEFAULT_GRID = sorted({1.0, 0.9999, 0.9995, 0.999, 0.998, 0.995, 0.985, 0.975, *(round(0.01 * i, 2) for i in range(100))},
                      reverse=True)


# ----------------------------------------------------------------------------- p-values


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Bin(n, p) <= k)``, summed in log space (stable for n in the millions)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    j = np.arange(k + 1, dtype=np.float64)
    # log C(n, j) by cumulative sums of log((n - i) / (i + 1)): exact in float64, no lgamma needed
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - j[:-1]) - np.log(j[:-1] + 1))])
    log_pmf = log_choose + j * math.log(p) + (n - j) * math.log1p(-p)
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def binomial_pvalue(losses: int, n: int, epsilon: float) -> float:
    """Valid p-value of H0 "expected 0/1 loss > epsilon" after ``losses`` of ``n`` samples.

    ``P(Bin(n, r) <= k)`` falls as r grows, so its largest value under H0 is at r = epsilon.
    """
    return binomial_cdf(losses, n, epsilon)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion after ``k`` successes in ``n`` trials (bisection)."""
    tail = (1.0 - confidence) / 2

    def solve(target: float, kk: int) -> float:  # the p with P(Bin(n, p) <= kk) = target (it falls with p)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if binomial_cdf(kk, n, mid) > target else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(1.0 - tail, k - 1)
    upper = 1.0 if k == n else solve(tail, k)
    return lower, upper


def smallest_certifiable(n: int, delta: float) -> float:
    """The smallest epsilon that ``n`` samples can certify at all (zero losses): ``1 - delta ** (1 / n)``."""
    return 1.0 - delta ** (1.0 / n) if n else 1.0


def samples_needed(epsilon: float, delta: float) -> int:
    """Calibration samples needed to certify any candidate with zero losses: ``(1 - epsilon) ** n <= delta``."""
    return math.ceil(math.log(delta) / math.log1p(-epsilon))


# ----------------------------------------------------------------------------- losses and paths


def cascade_losses(probs: np.ndarray, labels: np.ndarray | None, thresholds: Sequence[float],
                   loss: str = "accuracy") -> np.ndarray:
    """Per-sample 0/1 loss ``(n,)`` of the cascade with ``thresholds`` over ``probs`` ``(levels, n, C)``.

    ``accuracy``: level 0 right and the cascade wrong (needs ``labels``); ``disagreement``: the
    cascade's label differs from level 0's.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose one of {LOSSES}")
    preds, _, _ = simulate_cascade(probs, active_order(thresholds), thresholds)
    reference = np.asarray(probs[0]).argmax(1)
    if loss == "disagreement":
        return (preds != reference).astype(np.int64)
    if labels is None:
        raise ValueError("loss='accuracy' needs labels; use loss='disagreement' for unlabelled data")
    return ((reference == labels) & (preds != labels)).astype(np.int64)


def level0_only(levels: int) -> list[float]:
    """Thresholds that skip every compressed level: the cascade answers at level 0 (loss 0)."""
    return [0.0] + [OFF] * (levels - 1)


def candidate_path(path: str, levels: int, grid: Sequence[float]) -> list[list[float]]:
    """One fixed path of threshold vectors, most conservative first (``grid`` from high to low).

    ``shared``: one threshold for every compressed level (each tried, most compressed first);
    ``direct``: the most compressed level, then straight to level 0 (the levels between are off).
    """
    grid = sorted({float(t) for t in grid}, reverse=True)
    if path == "shared":
        return [[0.0] + [t] * (levels - 1) for t in grid]
    if path == "direct":
        return [[0.0] + [OFF] * (levels - 2) + [t] for t in grid]
    raise ValueError(f"path={path!r}: choose from {PATHS}")


# ----------------------------------------------------------------------------- the test


def fixed_sequence(pvalues: Sequence[float], alpha: float) -> int:
    """How many leading hypotheses fixed-sequence testing rejects at level ``alpha`` (stops at the first p > alpha)."""
    for i, p in enumerate(pvalues):
        if p > alpha:
            return i
    return len(pvalues)


def learn_then_test(probs: np.ndarray, labels: np.ndarray | None, level_cost: Sequence[float], epsilon: float,
                    delta: float, loss: str = "accuracy", paths: Sequence[str] = ("shared",),
                    grid: Sequence[float] = DEFAULT_GRID) -> dict[str, Any]:
    """Certify candidates along ``paths`` on ``probs`` ``(levels, n, C)`` and choose the cheapest certified.

    Returns ``thresholds`` (the choice; level 0 alone when nothing is certified), ``certified``
    (bool: a saving was certified), the choice's ``losses``, ``loss_rate``, ``mean_cost`` and
    ``cost_ratio`` on these samples, ``n``, ``alpha`` (delta per path) and ``tested``: every
    candidate tested, in order, with its path, losses, p-value, mean cost and whether certified.
    """
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"epsilon={epsilon}, delta={delta}: both must be in (0, 1)")
    levels, n = probs.shape[0], probs.shape[1]
    alpha = delta / len(paths)

    def point(thresholds: list[float]) -> dict[str, Any]:
        order = active_order(thresholds)
        _, answered, _ = simulate_cascade(probs, order, thresholds)
        k = int(cascade_losses(probs, labels, thresholds, loss).sum())
        cost = float(cascade_cost(answered, order, level_cost).mean())
        return {"thresholds": [float(t) for t in thresholds], "losses": k, "loss_rate": k / n,
                "p_value": binomial_pvalue(k, n, epsilon), "mean_cost": cost, "cost_ratio": cost / level_cost[0]}

    tested = []
    for path in paths:
        points = []
        for thresholds in candidate_path(path, levels, grid):
            points.append(point(thresholds))
            if points[-1]["p_value"] > alpha:
                break  # fixed sequence: nothing after the first non-rejection can be certified
        passed = fixed_sequence([p["p_value"] for p in points], alpha)
        tested += [{"path": path, **p, "certified": i < passed} for i, p in enumerate(points)]
    certified = [t for t in tested if t["certified"]]
    base = {**point(level0_only(levels)), "path": "level0", "certified": False}
    chosen = min(certified, key=lambda t: (t["mean_cost"], t["losses"])) if certified else base
    if chosen["mean_cost"] >= base["mean_cost"]:
        chosen = base  # a certified cascade that costs more than level 0 saves nothing
    return {**{k: chosen[k] for k in ("thresholds", "path", "losses", "loss_rate", "p_value", "mean_cost",
                                      "cost_ratio")},
            "certified": chosen is not base, "n": int(n), "epsilon": epsilon, "delta": delta, "loss": loss,
            "paths": list(paths), "alpha": alpha, "tested": tested, "certified_count": len(certified),
            "smallest_certifiable": smallest_certifiable(n, alpha),
            "samples_needed": samples_needed(epsilon, alpha)}
