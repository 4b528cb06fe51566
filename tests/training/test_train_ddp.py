"""Two-process gloo DDP training with torchrun on real compressed shards: equal steps, falling loss, exact resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import train_ddp as _train


def _metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _ranks(out: Path) -> dict[int, list[dict]]:
    return {r: [json.loads(line) for line in (out / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}


def test_both_ranks_run_the_same_steps_and_loss_falls(straight_run):
    ranks = _ranks(straight_run)
    assert [e["steps_run"] for e in ranks[0]] == [e["steps_run"] for e in ranks[1]]
    assert len(ranks[0]) == 3 and ranks[0][0]["steps_run"] > 1
    rows = _metrics(straight_run)
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1, losses
    assert float(rows[-1]["val_acc"]) > 0.3  # 10 classes: chance is 0.1
    levels = [int(x) for x in rows[0]["levels"].split("/")]
    assert len(levels) == 5 and all(n > 0 for n in levels)  # every level drawn
    assert (straight_run / "tb").is_dir() and any((straight_run / "tb").iterdir())


def test_checkpoint_loads_weights_only_and_resume_is_exact(straight_run, compressed, tmp_path):
    state = torch.load(straight_run / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["spec"]["modality"] == "image"
    assert state["config"]["model"]["dim"] == 64 and len(state["rng"]) == 2
    # resume the same run from its epoch-2 checkpoint: epoch 3 must come out exactly as it did
    shutil.copy(straight_run / "epoch-002.pt", tmp_path / "last.pt")
    _train(compressed, tmp_path, 3, "--resume")
    assert [int(r["epoch"]) for r in _metrics(tmp_path)] == [3]
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)
    assert resumed["step"] == state["step"]
    for name, tensor in state["model"].items():
        assert torch.allclose(tensor, resumed["model"][name], atol=1e-6), f"{name} differs after resume"
    assert _metrics(tmp_path)[0]["train_loss"] == _metrics(straight_run)[2]["train_loss"]


def test_baseline_uses_only_level0(compressed, tmp_path):
    _train(compressed, tmp_path, 1, "--baseline", "--set", "max_steps_per_epoch=3")
    levels = [int(x) for x in _metrics(tmp_path)[0]["levels"].split("/")]
    assert levels[0] > 0 and sum(levels[1:]) == 0
