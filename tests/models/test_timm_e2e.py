"""A timm ViT end to end on the Fashion-MNIST fixture: 2-rank DDP ``icpc train --model timm:...`` -> evaluate ->
calibrate -> ``icpc serve`` answers one HTTP request."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from icpc.inference.front import free_port
from tests.conftest import REPO, run_cli

pytest.importorskip("timm")
pytestmark = pytest.mark.integration
MODEL = "timm:vit_tiny_patch16_224"


def test_a_timm_vit_trains_evaluates_calibrates_and_serves(compressed, image_folder, tmp_path):
    run = tmp_path / "vit"
    run_cli("train", "--nproc-per-node", "2", "--data", str(compressed), "--output", str(run), "--epochs", "5",
            "--batch-size", "16", "--lr", "2e-3", "--model", MODEL, "--set", "model.args.depth=2",
            "--set", "model.args.global_pool=avg",
            "--set", "threads=1", "--set", "loader_workers=1", "--set", "collective_timeout_s=120")
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert state["model_plugin"] == {"ref": MODEL, "args": {"depth": 2, "global_pool": "avg"}, "weights": "",
                                     "factory": "icpc.models.timm_vit:build"}
    assert "vit.pos_embed" in state["model"] and state["model"]["vit.pos_embed"].shape == (1, 50, 192)

    run_cli("evaluate", "--checkpoint", str(run / "last.pt"), "--output", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["levels"][0]["accuracy"] > 0.3, report["levels"]  # 10 classes: chance is 0.1

    run_cli("calibrate", "--checkpoint", str(run / "last.pt"), "--cost", "tokens")
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    assert len(thresholds) == 5

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "icpc.cli", "serve", "--checkpoint", str(run / "last.pt"),
                               "--port", str(port), "--set", "num_cpus=2"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        body = sorted((image_folder / "test").glob("*/*.png"))[0].read_bytes()
        deadline, answer = time.monotonic() + 300, None
        while time.monotonic() < deadline and answer is None:
            assert server.poll() is None, server.stdout.read()
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=body,
                               headers={"Content-Type": "image/png"}, timeout=30)
                answer = r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                pass
            time.sleep(0 if answer else 2)
        assert answer is not None, "the server never answered"
        assert answer["label_name"] in state["classes"] and answer["levels_tried"][-1] == answer["level"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
