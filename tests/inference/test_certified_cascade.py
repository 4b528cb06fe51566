"""Issue 26's checks on a real trained checkpoint: Learn then Test keeps its promise over many random
calibration draws of real held-out predictions, and the demo's summary, ``icpc evaluate`` and the
server report the cascade of one thresholds.json."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from icpc.inference.serve import ServeConfig, thresholds_path
from icpc.inference.thresholds import load_thresholds
from tests.conftest import run_cli

spec = importlib.util.spec_from_file_location("ltt_splits", Path(__file__).parents[2] / "bench" / "ltt_splits.py")
ltt_splits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ltt_splits)

EPSILON, DELTA = 0.1, 0.2   # the fixture's ~60 val images certify nothing at 0.01 (test_calibrate.py)


@pytest.fixture(scope="module")
def calibrated(straight_run, tmp_path_factory) -> Path:
    """A copy of the trained checkpoint, calibrated (tokens), evaluated on test and on val (probs.npz each)."""
    run = tmp_path_factory.mktemp("certified")
    shutil.copy(straight_run / "last.pt", run / "last.pt")
    ckpt = str(run / "last.pt")
    run_cli("calibrate", "--checkpoint", ckpt, "--cost", "tokens", "--epsilon", str(EPSILON), "--delta", str(DELTA))
    run_cli("evaluate", "--checkpoint", ckpt)
    run_cli("evaluate", "--checkpoint", ckpt, "--split", "val", "--output", str(run / "eval-val"))
    return run


def _cascade_by_hand(probs: np.ndarray, thresholds: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The cascade of DESIGN contract 5, one sample at a time: (label, answering level) per sample."""
    order = [lv for lv in range(len(thresholds) - 1, 0, -1) if thresholds[lv] <= 1] + [0]
    labels, levels = [], []
    for i in range(probs.shape[1]):
        for level in order:
            p = probs[level, i].astype(np.float64)
            if p.max() >= thresholds[level] or level == 0:
                labels.append(int(p.argmax()))
                levels.append(level)
                break
    return np.array(labels), np.array(levels)


def test_the_demo_summary_evaluate_and_the_server_report_one_thresholds_file(calibrated):
    from icpc.demo.run import cascade_summary

    served = load_thresholds(thresholds_path(ServeConfig(checkpoint=str(calibrated / "last.pt"))), 5)
    calibration = json.loads((calibrated / "thresholds.json").read_text())
    evaluated = json.loads((calibrated / "eval" / "eval.json").read_text())["calibrated"]
    assert calibration["thresholds"] == evaluated["thresholds"] == served
    # the test figures, recomputed from evaluate's stored probabilities (numpy's reader) by a per-sample loop
    stored = np.load(calibrated / "eval" / "probs.npz", allow_pickle=False)
    labels, answered = _cascade_by_hand(stored["probs"], served)
    accuracy = float((labels == stored["labels"]).mean())
    tokens = [49, 36, 25, 16, 9]
    order = evaluated["order"]
    paid = [sum(tokens[o] for o in order[: order.index(a) + 1]) for a in answered]
    for figures in (calibration["test"], evaluated):
        assert figures["samples"] == len(labels) and figures["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert figures["token_ratio"] == pytest.approx(np.mean(paid) / 49, abs=1e-12)
    summary = cascade_summary(calibration)
    assert f"thresholds.json {served}" in summary
    assert (f"accuracy {accuracy:.4f} ({100 * (accuracy - calibration['test']['reference_accuracy']):+.2f} pts vs "
            f"level 0) at {np.mean(paid) / 49:.2f}x the tokens") in summary
    assert ("certified: with probability >= 0.8" in summary) == calibration["certified"]


def test_learn_then_test_holds_over_random_calibration_draws_of_real_predictions(calibrated):
    probs, labels, tokens = ltt_splits.load_pool([calibrated / "eval-val" / "probs.npz",
                                                  calibrated / "eval" / "probs.npz"])
    n = len(labels)
    assert probs.shape == (5, n, 10) and n > 200
    # population: calibration drawn from the pool, the loss measured on the whole pool (what the guarantee
    # is about), so at most delta of the draws may exceed epsilon
    pop = ltt_splits.split_study(probs, labels, tokens, n // 2, 200, EPSILON, DELTA, mode="population")
    print(ltt_splits.format_study(pop))
    assert pop["ltt"]["ci95"][0] <= DELTA, pop["ltt"]
    assert pop["ltt"]["mean_token_ratio"] <= 1.0   # a cascade costlier than level 0 is never chosen
    # the naive choice (cheapest with calibration loss <= epsilon) is printed beside it; whether it breaks the
    # promise depends on the model (on the demo's it does, 45% of draws: BENCHMARKS.md), so it is not asserted
    split = ltt_splits.split_study(probs, labels, tokens, n // 2, 200, EPSILON, DELTA, mode="split", naive=False)
    print(ltt_splits.format_study(split))
    assert split["ltt"]["ci95"][0] <= DELTA, split["ltt"]
