"""bench/time_to_accuracy.py's pure parts: the interval over seeds and the equal-time baseline comparison."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("time_to_accuracy", Path(__file__).parents[2] / "bench" / "time_to_accuracy.py")
tta = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tta)


def run(seconds: list[float], acc: list[float]) -> dict:
    return {"seconds": seconds, "tokens": [1] * len(seconds), "test_acc": acc, "val_acc": acc, "levels": []}


def test_the_interval_is_the_student_t_half_width_over_seeds():
    mean, half = tta.interval([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82) and half == pytest.approx(4.303 * 0.02 / 3 ** 0.5)


def test_an_icpc_arm_is_compared_with_the_baseline_arm_nearest_in_training_time():
    arms = {"baseline": (30, ["baseline=true"]), "icpc": (30, []), "baseline-19": (19, ["baseline=true"])}
    results = {"baseline": {0: run([6.0] * 30, [0.78] * 30), 1: run([6.0] * 30, [0.79] * 30)},
               "icpc": {0: run([4.0] * 30, [0.80] * 30), 1: run([4.0] * 30, [0.80] * 30)},
               "baseline-19": {0: run([6.0] * 19, [0.81] * 19), 1: run([6.0] * 19, [0.79] * 19)}}
    text = tta.versus_nearest_baseline("icpc", arms, results, [0, 1])
    # icpc trains 120 s; baseline-19 114 s is nearer than baseline's 180 s; differences -1 and +1 points
    assert text.startswith("baseline-19 (0.95x this arm's time): +0.00 ± ")
    assert tta.versus_nearest_baseline("baseline-19", arms, results, [0, 1]) == ""


def test_the_table_names_the_equal_time_baseline(tmp_path):
    arms = {"baseline": (2, ["baseline=true"]), "icpc": (2, [])}
    results = {"baseline": {0: run([10.0, 10.0], [0.7, 0.8])}, "icpc": {0: run([5.0, 5.0], [0.6, 0.75])}}
    from datetime import datetime, timezone
    tta.write_table(tmp_path, arms, results, [0], datetime(2026, 12, 2, tzinfo=timezone.utc))
    table = (tmp_path / "table.md").read_text()
    assert "| icpc | 2 | 0.7500 ± nan | 10 ± nan | 0.50 |" in table
    assert "baseline (2.00x this arm's time): -5.00 ± nan" in table
    # at icpc's 10 s the baseline's own curve stood at 0.7: +5 points at equal time
    assert "| -5.00 ± nan | +5.00 ± nan |" in table
