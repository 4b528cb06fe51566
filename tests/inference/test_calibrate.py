"""Threshold files and cascade figures on hand-built probabilities, then ``icpc calibrate`` on a trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icpc.inference.thresholds import OFF, active_order, check_thresholds, load_thresholds
from icpc.inference.cascade_report import cascade_figures, evaluate_thresholds
from tests.conftest import run_cli

# Three levels (0 = reference, 2 = most compressed), four samples, labels [0, 0, 1, 1].
# Level 0 is always right. Level 2 is right and sure (0.9) on samples 0-1, wrong on 2 (0.6) and 3 (0.8).
# Level 1 is right on all, sure 0.9 / 0.9 / 0.7 / 0.95.
LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([
    [[0.8, 0.2], [0.8, 0.2], [0.2, 0.8], [0.2, 0.8]],      # level 0
    [[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.05, 0.95]],    # level 1
    [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.8, 0.2]],      # level 2
])
COST = [4.0, 2.0, 0.5]
GRID = [0.5, 0.7, 0.85, 0.9, 0.95]


def test_active_order_skips_levels_above_one_but_never_level_0():
    assert active_order([0.0, 0.9, 0.8]) == [2, 1, 0]
    assert active_order([0.0, 0.5, OFF, 0.3]) == [3, 1, 0]
    assert active_order([5.0, OFF, OFF]) == [0]


def test_check_thresholds():
    assert check_thresholds([0.0, 0.5, 1.2], 3) == []
    assert "3 numbers" in check_thresholds([0.5, 0.5], 3)[0]
    assert ">= 0" in check_thresholds([0.5, -0.1, 0.5], 3)[0]
    assert check_thresholds([0.5, "high", 0.5], 3) and check_thresholds("0.5", 3) and check_thresholds([0, True, 1], 3)


def test_evaluate_thresholds_hand_computed():
    # level 2 answers samples 0, 1 (0.9 >= 0.85; cost 0.5); 2 and 3 go on to level 1: sample 3
    # answers there (0.95; cost 2.5), sample 2 (0.7 < 0.85) falls back to level 0 (cost 6.5).
    r = evaluate_thresholds(PROBS, LABELS, [0.0, 0.85, 0.85], COST)
    assert r["accuracy"] == 1.0 and r["order"] == [2, 1, 0]
    assert r["mean_cost"] == pytest.approx((0.5 + 0.5 + 6.5 + 2.5) / 4)
    assert r["answered"] == {"0": 0.25, "1": 0.25, "2": 0.5}
    assert r["mean_levels_tried"] == pytest.approx((1 + 1 + 3 + 2) / 4)
    # level 1 switched off: it is not tried, so sample 3 costs 0.5 + 4 and sample 2 too.
    r = evaluate_thresholds(PROBS, LABELS, [0.0, OFF, 0.85], COST)
    assert r["order"] == [2, 0] and r["mean_cost"] == pytest.approx((0.5 + 0.5 + 4.5 + 4.5) / 4)


def test_cascade_figures_count_the_tokens_of_every_level_tried():
    tokens = np.array([[4, 4, 4, 4], [2, 2, 2, 2], [1, 1, 1, 1]])
    # as in test_evaluate_thresholds_hand_computed, level 1 off: samples 0, 1 pay 1 token, 2 and 3 pay 1 + 4
    f = cascade_figures(PROBS, LABELS, [0.0, OFF, 0.85], tokens, COST)
    assert f["order"] == [2, 0] and f["mean_tokens"] == pytest.approx(3.0) and f["token_ratio"] == pytest.approx(0.75)
    assert f["accuracy"] == f["reference_accuracy"] == 1.0 and f["lost"] == 0 and f["disagreement"] == 0
    assert f["mean_cost"] == pytest.approx((0.5 + 0.5 + 4.5 + 4.5) / 4) and f["cost_ratio"] == pytest.approx(2.5 / 4)
    # shared 0.7: level 2 answers sample 3 (0.8) wrongly, where level 0 was right
    f = cascade_figures(PROBS, LABELS, [0.0, 0.7, 0.7], tokens)
    assert f["accuracy"] == 0.75 and f["lost"] == 0.25 and f["accuracy_delta"] == -0.25 and "cost_ratio" not in f


def test_load_thresholds_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "thresholds.json"
    with pytest.raises(FileNotFoundError, match="icpc calibrate"):
        load_thresholds(path, 3)
    path.write_text(json.dumps({"thresholds": [0.0, 0.9]}))
    with pytest.raises(ValueError, match="thresholds.json.*3 numbers"):
        load_thresholds(path, 3)
    path.write_text(json.dumps({"thresholds": [0, 0.9, 1.01]}))
    assert load_thresholds(path, 3) == [0.0, 0.9, 1.01]


def test_icpc_calibrate_says_plainly_when_the_split_is_too_small(straight_run, compressed, tmp_path):
    """About 60 val images cannot certify a loss of 0.01 (zero losses need 299 at delta 0.1 over two paths):
    the cascade answers at level 0, and the report says so and why."""
    proc = run_cli("calibrate", "--checkpoint", str(straight_run / "last.pt"), "--output", str(tmp_path),
                   "--cost", "tokens")
    assert "NOT CERTIFIED" in proc.stdout and "too small to certify any saving" in proc.stdout
    report = json.loads((tmp_path / "thresholds.json").read_text())
    manifest = json.loads((compressed / "manifest.json").read_text())
    assert report["thresholds"] == [0.0, OFF, OFF, OFF, OFF] and report["order"] == [0]
    assert (report["epsilon"], report["delta"], report["loss"], report["certified"]) == (0.01, 0.1, "accuracy", False)
    assert report["n"] == report["val"]["samples"] == manifest["counts"]["val"] < 299
    assert "at least 299" in report["guarantee"] and report["level_cost"] == [49, 36, 25, 16, 9]
    test = report["test"]
    assert test["samples"] == manifest["counts"]["test"] and test["token_ratio"] == 1.0
    assert test["accuracy"] == test["reference_accuracy"] and test["lost"] == 0
    # every candidate tested is recorded: the first of each path already fails, so each path stopped there
    assert [t["path"] for t in report["tested"]] == ["shared", "direct"]
    assert all(not t["certified"] and t["p_value"] > 0.05 for t in report["tested"])
    assert (tmp_path / "calibrate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_icpc_calibrate_serving_cost_is_compression_plus_model_plus_overhead(straight_run, compressed, tmp_path):
    """The default cost: per level, what the server pays (its compression and its forward pass at the serving
    batch, timed on raw test inputs), so the cheapest thresholds are cheapest for the server."""
    proc = run_cli("calibrate", "--checkpoint", str(straight_run / "last.pt"), "--output", str(tmp_path),
                   "--epsilon", "0.2", "--delta", "0.2", "--device", "cpu", "--set", "cost_samples=64", "--set", "serve_batch=16",
                   "--set", "level_overhead_ms=2.0", "--set", "check_split=")
    assert "serving cost on cpu (float32)" in proc.stdout
    report = json.loads((tmp_path / "thresholds.json").read_text())
    sv = report["serving"]
    assert report["cost"] == "serving" and report["device"] == "cpu" and sv["batch_size"] == 16
    assert sv["samples"] == min(64, report["samples"])   # raw inputs of the val split, at most cost_samples
    assert len(sv["compress_ms"]) == len(sv["forward_ms"]) == 5 and sv["decode_ms"] > 0
    for lv, cost in enumerate(report["level_cost"]):
        assert cost == pytest.approx(sv["compress_ms"][lv] + sv["forward_ms"][lv] + 2.0)
        assert sv["forward_ms"][lv] > 0 and sv["compress_ms"][lv] > 0
    # the chosen point's mean cost is the cascade cost over those per-level costs, by hand
    val, order = report["val"], report["order"]
    paid = {lv: sum(report["level_cost"][o] for o in order[: order.index(lv) + 1]) for lv in order}
    assert val["mean_cost"] == pytest.approx(sum(frac * paid[int(lv)] for lv, frac in val["answered"].items() if frac))
    assert val["cost_ratio"] <= 1.0 + 1e-9 and report["expected_cost"]["cost_ratio"] == val["cost_ratio"]

