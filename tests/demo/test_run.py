"""icpc/demo/run.py's pure parts: the two runs it trains, accuracy at a training time, the closing table."""

from __future__ import annotations

import pytest

from icpc.demo import DEMOS
from icpc.demo.run import arms, at_time, comparison


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
    report = lambda acc: {"levels": [{**level, "accuracy": acc}], "chosen": {  # noqa: E731
        "threshold": 0.5, "accuracy": acc, "accuracy_delta": 0.0, "token_ratio": 0.2, "time_ratio": 0.5,
        "answered": {"0": 1.0}}}
    curves = {"icpc": {"seconds": [10.0, 20.0], "tokens": [100, 200], "test_acc": [0.6, 0.82]},
              "baseline": {"seconds": [20.0, 40.0], "tokens": [200, 400], "test_acc": [0.7, 0.81]}}
    text = comparison({"icpc": report(0.82), "baseline": report(0.81)}, curves, DEMOS["image"])
    assert "0.8200 vs 0.8100 (+1.00 pts) in 0.50x the baseline's training time and 0.50x its tokens" in text
    assert "At equal time (20 s of training): ICPC 0.8200, the baseline 0.7000" in text
