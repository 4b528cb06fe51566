"""Text, video and audio served over HTTP on 127.0.0.1: three apps on one Serve, real demo data, real checkpoints.

Each modality gets a tiny real dataset (the demo builders), ``icpc compress`` and one epoch of ``icpc
train`` (one process: the answers are checked against the checkpoint, not for accuracy). Every answer
is checked against the cascade computed here by hand: the pipeline's compression of every level,
the checkpoint's model, the contract's rule (stop at the first level whose top probability reaches
its threshold, the last level tried answers).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from icpc.inference.front import free_port

pytestmark = pytest.mark.integration

OFF = 1.01
# Per modality: the thresholds served (index = level; OFF skips a level) and compress --set overrides.
CASES = {
    "text": {"thresholds": [0.0, 0.4, OFF, 0.35, 0.3], "sets": ["text.max_len=32", "text.vocab_size=2000"]},
    "video": {"thresholds": [0.0, OFF, 0.3, 0.3, 0.25], "sets": []},
    "audio": {"thresholds": [0.0, 0.2, 0.2, OFF, 0.15], "sets": []},
}
TRAIN = ["--epochs", "1", "--batch-size", "16", "--set", "model.dim=32", "--set", "model.depth=1",
         "--set", "model.heads=2", "--set", "threads=1"]


def _build(modality: str, root: Path) -> Path:
    """Raw demo inputs of ``modality`` under ``root``; returns what ``icpc compress --input`` takes."""
    if modality == "text":
        from icpc.demo.wordnet import build_wordnet_glosses

        build_wordnet_glosses(root, 96, 24, seed=0, classes=4)
        return root / "glosses.jsonl"
    if modality == "video":
        from icpc.demo.moving_mnist import build_moving_fashion_mnist

        build_moving_fashion_mnist(root, 32, 8, seed=0)
        return root
    from icpc.demo.spoken_digits import build_spoken_digits

    build_spoken_digits(root, 40, 10, seed=0)
    return root


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> dict[str, Path]:
    """modality -> a trained checkpoint (its dataset beside it), with the test thresholds file.

    The three `icpc train` processes run at once: most of each is Python and torch start-up.
    """
    import os
    import subprocess
    import sys

    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress
    from tests.conftest import REPO

    roots = {}
    for modality, case in CASES.items():
        root = roots[modality] = tmp_path_factory.mktemp(modality)
        raw = _build(modality, root / "raw")
        run_compress(finalize(CompressConfig(modality=modality, input=str(raw), output=str(root / "data"),
                                             shard_samples=100, overwrite=True), case["sets"]), progress=False)
    trainers = {m: subprocess.Popen([sys.executable, "-m", "icpc.cli", "train", "--data", str(r / "data"),
                                     "--output", str(r / "run"), *TRAIN], cwd=REPO, env=dict(os.environ),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for m, r in roots.items()}
    for modality, proc in trainers.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"icpc train ({modality}) exited {proc.returncode}:\n{out[-3000:]}"
    for modality, root in roots.items():
        (root / "run" / "thresholds.json").write_text(json.dumps({"thresholds": CASES[modality]["thresholds"]}))
    return {m: r / "run" / "last.pt" for m, r in roots.items()}


@pytest.fixture(scope="module")
def apps(runs):
    """The three apps on one Serve, each under /<modality>; yields the base URL."""
    from ray import serve

    from icpc.inference.serve import ServeConfig, start_serve, stop_serve

    port = free_port()
    cfgs = [ServeConfig(checkpoint=str(ckpt), port=port, app_name=modality, route_prefix=f"/{modality}",
                        ingress_cpus=0.1, classifier_cpus=0.1, batch_wait_timeout_s=0.02)
            for modality, ckpt in runs.items()]
    url = start_serve(*cfgs)
    yield url
    stop_serve()


@pytest.fixture(scope="module")
def client(apps):
    import httpx

    with httpx.Client(base_url=apps, timeout=120) as c:
        yield c


def _inputs(checkpoint: Path, n: int) -> list[dict]:
    """``n`` raw test inputs of the checkpoint's dataset, as a client sends them."""
    from icpc.inference.calibrate import raw_inputs
    from icpc.modelio import load_checkpoint

    return raw_inputs(load_checkpoint(str(checkpoint))["data"], "test", n)


def _by_hand(checkpoint: Path, data: bytes, thresholds: list[float]) -> dict:
    """The cascade without the server: every level compressed by the pipeline, the model on each in turn."""
    import torch

    from icpc.contract import positions_for
    from icpc.modelio import load_model
    from icpc.pipeline.modalities import get_modality

    model, spec, state = load_model(str(checkpoint))
    levels = get_modality(spec.modality).compress_bytes(data, spec).levels
    order = [lv for lv in range(len(levels) - 1, -1, -1) if lv == 0 or thresholds[lv] <= 1]
    tried = []
    for i, level in enumerate(order):
        tokens, stored = levels[level]
        positions = positions_for(model.strategy, spec.reference_grid, spec.ladder[level].grid, stored)
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(tokens)[None]),
                           torch.from_numpy(np.asarray(positions, dtype=np.int64)[None]), level)
        probs = torch.softmax(logits.float(), 1)[0].numpy()
        tried.append(level)
        if probs.max() >= thresholds[level] or i == len(order) - 1:
            return {"label": int(probs.argmax()), "label_name": state["classes"][int(probs.argmax())],
                    "score": float(probs.max()), "level": level, "levels_tried": tried,
                    "tokens": sum(len(levels[lv][0]) for lv in tried)}
    raise AssertionError("unreachable")


@pytest.mark.parametrize("modality", list(CASES))
def test_raw_uploads_match_the_cascade_by_hand(modality, client, runs):
    info = client.get(f"/{modality}/v1/info").json()
    assert info["modality"] == modality and info["thresholds"] == CASES[modality]["thresholds"]
    assert client.get(f"/{modality}/healthz").json()["model"]["ready"] is True
    for sample in _inputs(runs[modality], 4):
        r = client.post(f"/{modality}/v1/predict", content=sample["data"], headers={"Content-Type": sample["content_type"]})
        assert r.status_code == 200, r.text
        got, want = r.json(), _by_hand(runs[modality], sample["data"], CASES[modality]["thresholds"])
        assert {k: got[k] for k in ("label", "label_name", "level", "levels_tried", "tokens")} == \
               {k: want[k] for k in ("label", "label_name", "level", "levels_tried", "tokens")}
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert set(got["timing_ms"]) == {"decode", "compress", "model", "forward", "queue"} and got["latency_ms"] > 0


@pytest.mark.parametrize("modality", list(CASES))
def test_json_body_gives_the_raw_upload_answer(modality, client, runs):
    sample = _inputs(runs[modality], 1)[0]
    raw = client.post(f"/{modality}/v1/predict", content=sample["data"],
                      headers={"Content-Type": sample["content_type"]}).json()
    body = ({"text": sample["data"].decode()} if modality == "text"
            else {"data": base64.b64encode(sample["data"]).decode(), "modality": modality})
    js = client.post(f"/{modality}/v1/predict", json=body).json()
    assert {k: js[k] for k in ("label", "level", "levels_tried")} == {k: raw[k] for k in ("label", "level", "levels_tried")}


@pytest.mark.parametrize("modality, kwargs, status, reason", [
    ("text", {"content": b"bad \xff byte", "headers": {"Content-Type": "text/plain"}}, 422, "cannot decode the text"),
    ("text", {"json": {"text": "   "}}, 422, "cannot decode the text"),
    ("text", {"json": {"data": "AAAA"}}, 415, "serves text"),
    ("video", {"content": b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "headers": {"Content-Type": "video/mp4"}},
     422, "cannot decode the video"),
    ("video", {"content": b"RIFF", "headers": {"Content-Type": "audio/wav"}}, 415, "carries audio"),
    ("audio", {"content": bytes(range(256)) * 8, "headers": {"Content-Type": "audio/wav"}}, 422, "cannot decode the audio"),
    ("audio", {"json": {"text": "one"}}, 415, "serves audio"),
])
def test_bad_inputs_get_a_4xx_with_the_reason(modality, kwargs, status, reason, client):
    r = client.post(f"/{modality}/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"] and r.json()["status"] == status
