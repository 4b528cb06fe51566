"""``icpc evaluate`` on a checkpoint trained by the DDP test: per-level accuracy, cascade sweep, report files."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def checkpoint(straight_run):
    return straight_run / "last.pt"


def test_evaluate_reports_levels_and_cascade(checkpoint, tmp_path):
    proc = run_cli("evaluate", "--checkpoint", str(checkpoint), "--output", str(tmp_path),
                   "--set", "thresholds=[0.0,0.5,0.9,1.01]")
    # the sweep is a curve, never "the" result: no threshold is chosen on the data it is reported on
    assert "threshold sweep on test" in proc.stdout and "not a result" in proc.stdout
    assert "chosen threshold" not in proc.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["samples"] == 200 and [lv["tokens"] for lv in report["levels"]] == [49, 36, 25, 16, 9]
    assert report["levels"][0]["accuracy"] > 0.3
    by_t = {s["threshold"]: s for s in report["cascade"]}
    # threshold 0: the most compressed level answers everything at its own accuracy and cost
    assert by_t[0.0]["answered"]["4"] == 1.0 and by_t[0.0]["accuracy"] == report["levels"][4]["accuracy"]
    assert by_t[0.0]["mean_tokens"] == 9
    # threshold above 1 turns the compressed levels off (a float32 softmax can round to exactly 1.0, so no
    # threshold <= 1 is "never confident"): level 0 alone answers, at level 0's accuracy and tokens
    assert by_t[1.01]["answered"]["0"] == 1.0 and by_t[1.01]["accuracy"] == report["levels"][0]["accuracy"]
    assert by_t[1.01]["mean_tokens"] == 49 and by_t[1.01]["mean_levels_tried"] == 1
    # a threshold in between tries the levels in order: never fewer tokens than the most compressed level
    assert 9 <= by_t[0.9]["mean_tokens"] <= 49 + 36 + 25 + 16 + 9
    for s in report["cascade"]:
        assert abs(sum(s["answered"].values()) - 1) < 1e-9
    assert (tmp_path / "cascade.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "levels.csv").read_text().count("\n") == 6


def test_evaluate_refuses_a_dataset_with_another_ladder(checkpoint, compressed, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(compressed, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["spec"]["ladder"][1]["params"]["side"] = 20
    (other / "manifest.json").write_text(json.dumps(manifest))
    from icpc.config import EvalConfig, finalize
    from icpc.inference.evaluate import evaluate

    with pytest.raises(ValueError, match="ladder: model has .* data has"):
        evaluate(finalize(EvalConfig(checkpoint=str(checkpoint), data=str(other), output=str(tmp_path / "e"))))
