"""The variable-effort cascade (DESIGN contract 5) as pure functions over probabilities.

Levels are tried from the most compressed to level 0; the cascade stops at the first level whose
top softmax probability reaches that level's threshold, and the last level tried always answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Decision:
    label: int
    score: float          # top softmax probability of the answering level
    level: int            # the level that answered
    levels_tried: list[int]


def cascade_order(num_levels: int) -> list[int]:
    """Most compressed first: [K, K-1, ..., 0]."""
    return list(range(num_levels - 1, -1, -1))


def run_cascade(predict: Callable[[int], np.ndarray], order: Sequence[int],
                thresholds: Sequence[float]) -> Decision:
    """Call ``predict(level) -> probabilities (C,)`` level by level, only as far as needed.

    ``thresholds[level]`` is the confidence that lets ``level`` answer; the last level in
    ``order`` answers whatever its confidence (the fall-back).
    """
    if not order:
        raise ValueError("the cascade needs at least one level")
    tried = []
    for i, level in enumerate(order):
        probs = np.asarray(predict(level))
        tried.append(level)
        label, score = int(probs.argmax()), float(probs.max())
        if score >= thresholds[level] or i == len(order) - 1:
            return Decision(label, score, level, tried)
    raise AssertionError("unreachable: the last level always answers")


def simulate_cascade(probs: np.ndarray, order: Sequence[int], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised ``run_cascade`` over precomputed ``probs`` ``(levels, n, C)``.

    Returns (predicted label (n,), answering level (n,), number of levels tried (n,)).
    """
    probs = np.asarray(probs, dtype=np.float64)  # compare as run_cascade does (float64), ties included
    n = probs.shape[1]
    answered = np.full(n, -1)
    tried = np.zeros(n, dtype=int)
    for i, level in enumerate(order):
        pending = answered < 0
        tried[pending] += 1
        confident = probs[level].max(1) >= thresholds[level]
        answered[pending & (confident | (i == len(order) - 1))] = level
    preds = probs[answered, np.arange(n)].argmax(1)
    return preds, answered, tried


def cascade_cost(answered: np.ndarray, order: Sequence[int], level_cost: Sequence[float]) -> np.ndarray:
    """Per-sample cost: the sum of ``level_cost`` over every level tried up to the answering one."""
    cum = {}
    running = 0.0
    for level in order:
        running += level_cost[level]
        cum[level] = running
    return np.array([cum[a] for a in answered])


async def run_cascade_async(predict: Callable[[int], Any], order: list[int], thresholds: list[float]) -> Decision:
    """``run_cascade`` with an async ``predict(level)``: the decision stays the pure one of cascade.py.

    ``run_cascade`` is replayed over the probabilities known so far; when it asks for a level not
    computed yet, that level (and only that one) is awaited. Levels <= 5, so the replays cost nothing.
    """
    known: dict[int, np.ndarray] = {}

    class Pending(Exception):
        pass

    def lookup(level: int) -> np.ndarray:
        if level not in known:
            raise Pending(level)
        return known[level]

    while True:
        try:
            return run_cascade(lookup, order, thresholds)
        except Pending as missing:
            level = missing.args[0]
            known[level] = await predict(level)
