"""Unit tests for inference/cascade.py: the variable-effort decision (DESIGN contract 5)."""

from __future__ import annotations

import numpy as np
import pytest

from icpc.inference.cascade import cascade_cost, cascade_order, run_cascade, simulate_cascade

# probs per level for one sample: level 2 says class 1 at 0.6, level 1 says class 2 at 0.85,
# level 0 says class 0 at 0.7.
PROBS = {
    2: np.array([0.3, 0.6, 0.1]),
    1: np.array([0.05, 0.1, 0.85]),
    0: np.array([0.7, 0.2, 0.1]),
}


class Recorder:
    """predict(level) that remembers which levels it was asked for."""

    def __init__(self, probs):
        self.probs, self.calls = probs, []

    def __call__(self, level):
        self.calls.append(level)
        return self.probs[level]


def test_cascade_order():
    assert cascade_order(3) == [2, 1, 0]
    assert cascade_order(1) == [0]


@pytest.mark.parametrize("thresholds, label, score, level, tried", [
    # level 2 confident enough (0.6 >= 0.5): stops at once.
    ([0.9, 0.9, 0.5], 1, 0.6, 2, [2]),
    # level 2 not (0.6 < 0.7), level 1 is (0.85 >= 0.8).
    ([0.9, 0.8, 0.7], 2, 0.85, 1, [2, 1]),
    # nobody is confident: level 0 answers anyway (fall-back).
    ([0.99, 0.99, 0.99], 0, 0.7, 0, [2, 1, 0]),
    # an unreachable threshold on every level still yields an answer.
    ([1.5, 1.5, 1.5], 0, 0.7, 0, [2, 1, 0]),
    # the threshold is inclusive: 0.85 >= 0.85.
    ([0.0, 0.85, 0.9], 2, 0.85, 1, [2, 1]),
])
def test_run_cascade(thresholds, label, score, level, tried):
    predict = Recorder(PROBS)
    d = run_cascade(predict, [2, 1, 0], thresholds)
    assert (d.label, d.level, d.levels_tried) == (label, level, tried)
    assert d.score == pytest.approx(score)
    assert predict.calls == tried, "predict must be called only for the levels tried"


def test_run_cascade_partial_order_falls_back_to_its_last_level():
    predict = Recorder(PROBS)
    d = run_cascade(predict, [2, 1], [0.99, 0.99, 0.99])
    assert (d.level, d.label, d.levels_tried) == (1, 2, [2, 1])
    assert predict.calls == [2, 1]


def test_run_cascade_single_level_answers_unconfident():
    predict = Recorder(PROBS)
    d = run_cascade(predict, [0], [1.0])
    assert (d.level, d.label, d.levels_tried) == (0, 0, [0])
    assert predict.calls == [0]


def test_run_cascade_empty_order_raises():
    with pytest.raises(ValueError):
        run_cascade(Recorder(PROBS), [], [0.5])


THRESHOLD_SETTINGS = [
    [0.0, 0.0, 0.0],          # everything answers at the most compressed level
    [1.01, 1.01, 1.01],       # everything falls back to level 0
    [0.3, 0.5, 0.7],
    [0.9, 0.6, 0.4],
    [0.5, 0.5, 0.5],
    [0.0, 0.95, 0.8],
]


@pytest.mark.parametrize("thresholds", THRESHOLD_SETTINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_simulate_agrees_with_run(thresholds, dtype):
    rng = np.random.default_rng(1)
    levels, n, classes = 3, 300, 4
    probs = rng.dirichlet(np.full(classes, 0.7), size=(levels, n)).astype(dtype)
    order = cascade_order(levels)
    preds, answered, tried = simulate_cascade(probs, order, thresholds)
    assert preds.shape == answered.shape == tried.shape == (n,)
    for j in range(n):
        d = run_cascade(lambda level: probs[level, j], order, thresholds)
        assert (int(preds[j]), int(answered[j]), int(tried[j])) == (d.label, d.level, len(d.levels_tried)), j
    if thresholds == [0.0, 0.0, 0.0]:
        assert set(answered.tolist()) == {2} and set(tried.tolist()) == {1}
    if thresholds == [1.01, 1.01, 1.01]:
        assert set(answered.tolist()) == {0} and set(tried.tolist()) == {3}


def test_simulate_agrees_with_run_when_a_float32_score_equals_the_threshold():
    """Calibration (simulate) and serving (run) must make the same call on float32 softmax outputs.

    float32(0.7) is 0.69999998..., just below the float64 threshold 0.7: run_cascade compares in
    float64 and goes on; simulate_cascade must do the same.
    """
    probs = np.array([[[0.1, 0.9]], [[0.7, 0.3]]], dtype=np.float32)  # (levels=2, n=1, C=2)
    order, thresholds = [1, 0], [0.5, 0.7]  # level 1 (tried first) scores float32(0.7) against 0.7
    d = run_cascade(lambda level: probs[level, 0], order, thresholds)
    preds, answered, tried = simulate_cascade(probs, order, thresholds)
    assert (int(preds[0]), int(answered[0]), int(tried[0])) == (d.label, d.level, len(d.levels_tried))


def test_simulate_hand_computed():
    # 3 samples, levels (2 -> 1 -> 0), thresholds [0, 0.8, 0.9].
    probs = np.array([
        [[0.6, 0.4], [0.1, 0.9], [0.5, 0.5]],     # level 0
        [[0.85, 0.15], [0.3, 0.7], [0.2, 0.8]],   # level 1
        [[0.95, 0.05], [0.2, 0.8], [0.55, 0.45]], # level 2
    ])
    preds, answered, tried = simulate_cascade(probs, [2, 1, 0], [0.0, 0.8, 0.9])
    # sample 0: 0.95 >= 0.9 at level 2; sample 1: 0.8 < 0.9, 0.7 < 0.8, level 0 answers;
    # sample 2: 0.55 < 0.9, 0.8 >= 0.8 at level 1.
    assert answered.tolist() == [2, 0, 1]
    assert tried.tolist() == [1, 3, 2]
    assert preds.tolist() == [0, 1, 1]


def test_cascade_cost_hand_computed():
    order, level_cost = [2, 1, 0], [10.0, 4.0, 1.0]
    cost = cascade_cost(np.array([2, 1, 0, 1]), order, level_cost)
    assert cost.tolist() == [1.0, 5.0, 15.0, 5.0]


def test_cascade_cost_equals_sum_over_tried_levels():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(5), size=(4, 200))
    order, level_cost = cascade_order(4), [16.0, 9.0, 4.0, 1.0]
    _, answered, tried = simulate_cascade(probs, order, [0.0, 0.4, 0.5, 0.6])
    cost = cascade_cost(answered, order, level_cost)
    expected = [sum(level_cost[lv] for lv in order[:t]) for t in tried]
    np.testing.assert_allclose(cost, expected)
