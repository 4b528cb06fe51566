"""Learn then Test (inference/ltt.py): p-values against closed forms, losses and the fixed-sequence choice by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icpc.inference.ltt import (binomial_cdf, binomial_pvalue, candidate_path, clopper_pearson, cascade_losses, fixed_sequence,
                                learn_then_test, level0_only, samples_needed, smallest_certifiable)
from icpc.inference.thresholds import OFF

# Three levels (0 = reference, 2 = most compressed), four samples, labels [0, 0, 1, 1].
# Level 0: right on 0, 1, 2, wrong on 3 (0.6 for class 0). Level 2: sure and right on 0-1, sure (0.8)
# and wrong on 2, unsure (0.55) and right on 3. Level 1: right everywhere, 0.9 / 0.9 / 0.7 / 0.95.
LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([
    [[0.8, 0.2], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]],      # level 0
    [[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.05, 0.95]],    # level 1
    [[0.9, 0.1], [0.9, 0.1], [0.8, 0.2], [0.45, 0.55]],    # level 2
])


def test_binomial_cdf_matches_closed_forms():
    n, p = 50, 0.03
    assert binomial_cdf(0, n, p) == pytest.approx((1 - p) ** n, rel=1e-12)
    assert binomial_cdf(1, n, p) == pytest.approx((1 - p) ** n + n * p * (1 - p) ** (n - 1), rel=1e-12)
    assert binomial_cdf(2, n, p) == pytest.approx(sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(3)),
                                                  rel=1e-12)
    assert binomial_cdf(1, 3, 0.5) == pytest.approx(0.5, abs=1e-15)   # (1 + 3) / 8
    assert binomial_cdf(3, 3, 0.2) == 1.0 and binomial_cdf(-1, 3, 0.2) == 0.0
    assert binomial_cdf(0, 10, 0.0) == 1.0 and binomial_cdf(9, 10, 1.0) == 0.0
    for k in range(10):  # symmetry at p = 1/2: P(X <= k) + P(X <= n - k - 1) = 1
        assert binomial_cdf(k, 10, 0.5) + binomial_cdf(9 - k, 10, 0.5) == pytest.approx(1.0, abs=1e-12)
    # a million samples, no overflow: P(X <= mean) of Bin(1e6, 0.01) is just over 1/2 (normal approx. + pmf/2)
    assert binomial_cdf(10_000, 1_000_000, 0.01) == pytest.approx(0.5 + 0.5 / math.sqrt(2 * math.pi * 9_900), abs=1e-3)


def test_pvalue_falls_as_epsilon_grows_and_needs_enough_samples():
    ps = [binomial_pvalue(3, 400, e) for e in (0.005, 0.01, 0.02, 0.05)]
    assert ps == sorted(ps, reverse=True) and ps[-1] < 1e-4
    # (1 - 0.01) ** 230 = 0.0991 <= 0.1 < 0.99 ** 229 = 0.1001
    assert samples_needed(0.01, 0.1) == 230
    assert binomial_pvalue(0, 230, 0.01) <= 0.1 < binomial_pvalue(0, 229, 0.01)
    assert smallest_certifiable(230, 0.1) == pytest.approx(1 - 0.1 ** (1 / 230)) and smallest_certifiable(230, 0.1) < 0.01


def test_clopper_pearson_closed_forms():
    # k = 0: upper = 1 - (alpha/2) ** (1/n); k = n: lower = (alpha/2) ** (1/n)
    assert clopper_pearson(0, 20) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20), abs=1e-9))
    assert clopper_pearson(20, 20) == (pytest.approx(0.025 ** (1 / 20), abs=1e-9), 1.0)
    lo, hi = clopper_pearson(5, 100)
    assert binomial_cdf(5, 100, hi) == pytest.approx(0.025, abs=1e-9)
    assert 1 - binomial_cdf(4, 100, lo) == pytest.approx(0.025, abs=1e-9) and lo < 0.05 < hi


def test_cascade_losses_by_hand():
    # shared 0.85: level 2 answers samples 0, 1 (0.9) -> right; 2 (0.8) and 3 (0.55) go to level 1: sample 3
    # answers there (0.95, right: a gain over level 0), sample 2 (0.7) falls back to level 0.
    assert cascade_losses(PROBS, LABELS, [0.0, 0.85, 0.85]).tolist() == [0, 0, 0, 0]
    assert cascade_losses(PROBS, LABELS, [0.0, 0.85, 0.85], "disagreement").tolist() == [0, 0, 0, 1]
    # shared 0.8: level 2 also answers sample 2, wrongly, where level 0 was right: a loss
    assert cascade_losses(PROBS, LABELS, [0.0, 0.8, 0.8]).tolist() == [0, 0, 1, 0]
    assert cascade_losses(PROBS, None, [0.0, 0.8, 0.8], "disagreement").tolist() == [0, 0, 1, 1]
    assert cascade_losses(PROBS, LABELS, level0_only(3)).sum() == 0
    with pytest.raises(ValueError, match="needs labels"):
        cascade_losses(PROBS, None, [0.0, 0.8, 0.8])
    with pytest.raises(ValueError, match="loss='top5'"):
        cascade_losses(PROBS, LABELS, [0.0, 0.8, 0.8], "top5")


def test_paths_start_conservative_and_fixed_sequence_stops_at_the_first_failure():
    assert candidate_path("shared", 3, [0.5, 0.9]) == [[0.0, 0.9, 0.9], [0.0, 0.5, 0.5]]
    assert candidate_path("direct", 4, [0.9, 0.5]) == [[0.0, OFF, OFF, 0.9], [0.0, OFF, OFF, 0.5]]
    with pytest.raises(ValueError, match="choose from"):
        candidate_path("zigzag", 3, [0.5])
    assert fixed_sequence([0.01, 0.02, 0.5, 0.01], 0.05) == 2   # the last one is never reached
    assert fixed_sequence([0.2, 0.01], 0.05) == 0 and fixed_sequence([0.01, 0.04], 0.05) == 2


def _repeat(times: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(PROBS, (1, times, 1)), np.tile(LABELS, times)


def test_too_few_samples_certify_nothing_and_answer_at_level_0():
    probs, labels = _repeat(10)   # 40 samples: even zero losses give p = 0.99 ** 40 = 0.67
    r = learn_then_test(probs, labels, [4.0, 2.0, 0.5], epsilon=0.01, delta=0.1)
    assert not r["certified"] and r["thresholds"] == level0_only(3) and r["path"] == "level0"
    assert r["tested"][0]["p_value"] == pytest.approx(0.99 ** 40) and len(r["tested"]) == 1
    assert r["samples_needed"] == 230 and r["cost_ratio"] == 1.0


def test_enough_samples_certify_the_cheapest_candidate_with_no_losses():
    probs, labels = _repeat(100)  # 400 samples; below 0.8 level 2 loses sample 2 (a quarter of the data)
    cost = [4.0, 2.0, 0.5]
    r = learn_then_test(probs, labels, cost, epsilon=0.01, delta=0.1, paths=("shared",), grid=[1.0, 0.9, 0.85, 0.8, 0.5])
    tested = [(t["thresholds"][1], t["losses"], t["certified"]) for t in r["tested"]]
    # 1.0: nothing answers early (p = 0.99 ** 400 = 0.018); 0.9, 0.85: no losses; 0.8: 100 losses, stop
    assert tested == [(1.0, 0, True), (0.9, 0, True), (0.85, 0, True), (0.8, 100, False)]
    # 0.9 and 0.85 route every sample alike: 0.5 + 0.5 + (0.5 + 2 + 4) + (0.5 + 2) = 10 per four samples, 2.5
    # of level 0's 4; the tie goes to the first (most conservative) one
    assert r["certified"] and r["thresholds"] == [0.0, 0.9, 0.9] and r["losses"] == 0
    assert r["mean_cost"] == pytest.approx(2.5) and r["cost_ratio"] == pytest.approx(0.625)
    # the label-free loss certifies less: at 0.9 level 1 answers sample 3 right, but differently from level 0
    # (100 disagreements); only 1.0 is certified, and it costs 6.5 > 4 (every level tried): level 0 alone
    r = learn_then_test(probs, None, cost, 0.01, 0.1, "disagreement", ("shared",), [1.0, 0.9])
    assert [t["losses"] for t in r["tested"]] == [0, 100] and r["tested"][0]["mean_cost"] == pytest.approx(6.5)
    assert not r["certified"] and r["thresholds"] == level0_only(3) and r["loss"] == "disagreement"


def test_delta_is_split_between_paths_and_a_costlier_certified_cascade_is_not_taken():
    probs, labels = _repeat(100)
    r = learn_then_test(probs, labels, [4.0, 2.0, 0.5], 0.01, 0.1, paths=("shared", "direct"), grid=[0.9, 0.85])
    assert r["alpha"] == 0.05 and {t["path"] for t in r["tested"]} == {"shared", "direct"}
    # direct at 0.85: level 2 answers 0, 1 (0.5 each), samples 2 and 3 pay 0.5 + 4: mean 2.5, as the shared
    # path's 0.85 (ties break on losses, then the first found)
    assert r["mean_cost"] == pytest.approx(2.5) and r["losses"] == 0
    # level 1 as expensive as level 0: every certified cascade costs more than level 0 alone
    r = learn_then_test(probs, labels, [1.0, 1.0, 1.0], 0.01, 0.1, paths=("shared",), grid=[1.0])
    assert r["certified_count"] == 1 and not r["certified"] and r["thresholds"] == level0_only(3)
    with pytest.raises(ValueError, match="epsilon=0"):
        learn_then_test(probs, labels, [1.0, 1.0, 1.0], 0.0, 0.1)
