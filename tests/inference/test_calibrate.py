"""Threshold calibration: the pure search on hand-built probabilities, then ``icpc calibrate`` on a trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icpc.inference.thresholds import OFF, active_order, check_thresholds, load_thresholds
from icpc.inference.calibrate import (evaluate_thresholds,
                                 search_thresholds)
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


def test_search_no_accuracy_loss_goes_per_level():
    # Shared thresholds: 0.85 is the cheapest that keeps accuracy 1.0 (mean cost 2.5). Per level,
    # level 1 can then go down to 0.5 (it is right on everything): cost (0.5+0.5+2.5+2.5)/4 = 1.5.
    r = search_thresholds(PROBS, LABELS, COST, tolerance=0.0, grid=GRID)
    assert r["thresholds"] == [0.0, 0.5, 0.85]
    assert r["accuracy"] == 1.0 and r["mean_cost"] == pytest.approx(1.5)
    assert r["reference_accuracy"] == 1.0 and r["min_accuracy"] == 1.0
    shared = {s["thresholds"][1]: s for s in r["shared"]}
    assert shared[0.85]["mean_cost"] == pytest.approx(2.5) and shared[0.7]["accuracy"] == 0.75


def test_search_with_tolerance_takes_the_cheaper_less_accurate_point():
    # Losing sample 3 (25 points) is allowed: 0.7 everywhere lets level 2 answer 0, 1 and 3.
    r = search_thresholds(PROBS, LABELS, COST, tolerance=0.25, grid=GRID)
    assert r["accuracy"] == 0.75 and r["mean_cost"] == pytest.approx((0.5 * 3 + 2.5) / 4)
    assert r["thresholds"][2] == 0.7


def test_search_falls_back_to_level_0_when_nothing_else_is_accurate_enough():
    probs = PROBS.copy()
    probs[1] = probs[2]  # level 1 now as wrong as level 2
    probs[2, :2] = [[0.55, 0.45], [0.55, 0.45]]  # and level 2 unsure even where right
    r = search_thresholds(probs, LABELS, COST, tolerance=0.0, grid=[0.5, 0.95])
    assert r["order"] == [0] and r["mean_cost"] == 4.0 and r["accuracy"] == 1.0


def test_search_beats_every_feasible_shared_threshold_on_random_data():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 500)
    probs = rng.dirichlet(np.ones(4), size=(4, 500))
    for lv, sharp in enumerate([8.0, 4.0, 2.0, 1.0]):  # level 0 most often right
        probs[lv, np.arange(500), labels] += sharp * rng.random(500)
        probs[lv] /= probs[lv].sum(1, keepdims=True)
    cost = [16.0, 9.0, 4.0, 1.0]
    r = search_thresholds(probs, labels, cost, tolerance=0.003, grid=np.linspace(0, 1, 21).tolist())
    assert r["accuracy"] >= r["reference_accuracy"] - 0.003
    feasible = [s["mean_cost"] for s in r["shared"] if s["accuracy"] >= r["reference_accuracy"] - 0.003]
    assert r["mean_cost"] <= min(feasible + [cost[0]]) + 1e-9
    assert r["mean_cost"] < cost[0]  # the cascade pays off on this data
    again = evaluate_thresholds(probs, labels, r["thresholds"], cost)
    assert again["accuracy"] == r["accuracy"] and again["mean_cost"] == pytest.approx(r["mean_cost"])


def test_load_thresholds_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "thresholds.json"
    with pytest.raises(FileNotFoundError, match="icpc calibrate"):
        load_thresholds(path, 3)
    path.write_text(json.dumps({"thresholds": [0.0, 0.9]}))
    with pytest.raises(ValueError, match="thresholds.json.*3 numbers"):
        load_thresholds(path, 3)
    path.write_text(json.dumps({"thresholds": [0, 0.9, 1.01]}))
    assert load_thresholds(path, 3) == [0.0, 0.9, 1.01]


def test_icpc_calibrate_writes_thresholds_and_plot(straight_run, compressed, tmp_path):
    proc = run_cli("calibrate", "--checkpoint", str(straight_run / "last.pt"), "--output", str(tmp_path),
                   "--cost", "tokens", "--tolerance", "0.01")
    assert "thresholds" in proc.stdout and "val: accuracy" in proc.stdout
    report = json.loads((tmp_path / "thresholds.json").read_text())
    manifest = json.loads((compressed / "manifest.json").read_text())
    tokens = [49, 36, 25, 16, 9]
    assert len(report["thresholds"]) == 5 and report["level_cost"] == tokens
    assert report["samples"] == report["val"]["samples"] == manifest["counts"]["val"]
    assert report["test"]["samples"] == manifest["counts"]["test"]
    val = report["val"]
    assert val["accuracy"] >= val["reference_accuracy"] - 0.01
    assert val["reference_accuracy"] == report["levels"][0]["accuracy"]
    # cost from the answering fractions, by hand: a sample answered at level L paid every tried level up to L
    order = report["order"]
    assert order == [lv for lv in (4, 3, 2, 1, 0) if lv == 0 or report["thresholds"][lv] <= 1]
    paid = {lv: sum(tokens[o] for o in order[: order.index(lv) + 1]) for lv in order}
    mean_tokens = sum(frac * paid[int(lv)] for lv, frac in val["answered"].items() if frac)
    assert val["mean_cost"] == pytest.approx(mean_tokens) and val["cost_ratio"] == pytest.approx(mean_tokens / 49)
    assert val["cost_ratio"] <= 1.0 + 1e-9
    assert (tmp_path / "calibrate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_icpc_calibrate_serving_cost_is_compression_plus_model_plus_overhead(straight_run, compressed, tmp_path):
    """The default cost: per level, what the server pays (its compression and its forward pass at the serving
    batch, timed on raw test inputs), so the cheapest thresholds are cheapest for the server."""
    proc = run_cli("calibrate", "--checkpoint", str(straight_run / "last.pt"), "--output", str(tmp_path),
                   "--tolerance", "0.01", "--device", "cpu", "--set", "cost_samples=64", "--set", "serve_batch=16",
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
    assert val["accuracy"] >= val["reference_accuracy"] - 0.01 and val["cost_ratio"] <= 1.0 + 1e-9

