"""icpc/demo/run.py's pure parts: the two runs it trains, accuracy at a training time, the closing table."""

from __future__ import annotations

import pytest

from icpc.demo import DEMOS
from icpc.demo.run import arms, at_time, cascade_summary, comparison


def test_the_demo_trains_the_baseline_and_icpc_with_its_schedule():
    runs = arms(DEMOS["image"])
    assert runs["baseline"][1][:2] == ["baseline=true", "test_each_epoch=true"]
    assert set(DEMOS["image"].icpc_sets) <= set(runs["icpc"][1]) and "baseline=true" not in runs["icpc"][1]
    assert {n: e for n, (e, _) in arms(DEMOS["image"], epochs=3).items()} == {"baseline": 3, "icpc": 3}


def test_accuracy_at_a_training_time_interpolates_between_epoch_ends():
    c = {"seconds": [10.0, 20.0, 30.0], "test_acc": [0.5, 0.7, 0.8], "tokens": [1, 2, 3]}
    assert at_time(c, 15) == pytest.approx(0.6) and at_time(c, 30) == 0.8 and at_time(c, 5) == 0.5


def test_the_closing_table_states_the_equal_time_comparison():
    level = {"level": 0, "name": "side28", "tokens": 49, "mean_tokens": 49}
    report = lambda acc: {"levels": [{**level, "accuracy": acc}]}  # noqa: E731
    curves = {"icpc": {"seconds": [10.0, 20.0], "tokens": [100, 200], "test_acc": [0.6, 0.82]},
              "baseline": {"seconds": [20.0, 40.0], "tokens": [200, 400], "test_acc": [0.7, 0.81]}}
    text = comparison({"icpc": report(0.82), "baseline": report(0.81)}, curves, DEMOS["image"])
    assert "0.8200 vs 0.8100 (+1.00 pts) in 0.50x the baseline's training time and 0.50x its tokens" in text
    assert "At equal time (20 s of training): ICPC 0.8200, the baseline 0.7000" in text


def test_the_cascade_summary_reports_the_calibrated_test_figures_or_says_nothing_was_certified():
    test = {"samples": 2000, "accuracy": 0.8, "accuracy_delta": -0.0035, "token_ratio": 0.4123, "cost_ratio": 0.7,
            "answered": {"0": 0.25, "1": 0.0, "2": 0.75}}
    calibration = {"thresholds": [0.0, 1.01, 0.99], "certified": True, "guarantee": "loss <= 0.01 w.p. 0.9",
                   "n": 400, "split": "val", "epsilon": 0.01, "delta": 0.1, "cost": "serving", "test": test}
    text = cascade_summary(calibration)
    assert "thresholds.json [0.0, 1.01, 0.99], Learn then Test on 400 val samples, epsilon 0.01, delta 0.1" in text
    assert "accuracy 0.8000 (-0.35 pts vs level 0) at 0.41x the tokens of level 0, 0.70x its serving cost" in text
    assert "{'0': 0.25, '2': 0.75}" in text and "NOT" not in text.upper().replace("NOT A RESULT", "")
    text = cascade_summary({**calibration, "certified": False, "guarantee": "the val split is too small"})
    assert "NO SAVING CERTIFIED - the val split is too small" in text
