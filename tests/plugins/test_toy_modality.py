"""A modality added in one module (tests/plugins/toy_modality.py, no other file edited): compressed by the Ray
job, trained one step by two torchrun ranks, served over HTTP by ``icpc serve``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.readers import index_rows, manifest, rejects_rows, shard_samples

pytestmark = pytest.mark.integration
ENV = {"ICPC_MODALITIES": "tests.plugins.toy_modality", "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}


def icpc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "icpc.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def write_signals(root: Path, n: int = 96) -> None:
    """Rising ramps and sine waves with noise, 32 values each, in class folders (plus one bad file)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 32)
    for split, count in (("train", n), ("test", n // 4)):
        for cls, make in (("ramp", lambda: t), ("wave", lambda: np.sin(2 * np.pi * 3 * t))):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count // 2):
                values = make() + 0.1 * rng.standard_normal(32)
                (root / split / cls / f"{i}.sig").write_text(" ".join(f"{v:.4f}" for v in values))
    (root / "train" / "ramp" / "short.sig").write_text("1 2 3")


def test_a_plugin_modality_compresses_trains_and_serves(tmp_path):
    raw, data, run = tmp_path / "raw", tmp_path / "data", tmp_path / "run"
    write_signals(raw)
    icpc("compress", "--modality", "signal", "--input", str(raw), "--output", str(data), "--shard-samples", "16",
         "--set", "signal.lengths=32,16,8")
    m = manifest(data)
    assert m["modality"] == "signal" and [lv["tokens"] for lv in m["spec"]["ladder"]] == [8, 4, 2]
    rows = index_rows(data)
    assert [(Path(r["source"]).name, r["stage"]) for r in rejects_rows(data)] == [("short.sig", "compress")]
    sample = shard_samples(data / rows[0]["shard"], "float16", (4,))[rows[0]["key"]]
    assert [t.shape for t, _ in sample["levels"]] == [(8, 4), (4, 4), (2, 4)]
    assert sample["levels"][2][1].tolist() == [2, 6]  # centres of 2 cells of 8 -> reference cells 2 and 6

    icpc("train", "--nproc-per-node", "2", "--data", str(data), "--output", str(run), "--epochs", "1",
         "--batch-size", "8", "--set", "max_steps_per_epoch=1", "--set", "model.dim=16", "--set", "model.depth=1",
         "--set", "model.heads=2", "--set", "threads=1")
    assert (run / "last.pt").exists()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "icpc.cli", "serve", "--checkpoint", str(run / "last.pt"),
                               "--port", str(port), "--set", "set_thresholds=[0,0.5,0.5]", "--set", "num_cpus=2"],
                              cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        import httpx

        deadline, answer = time.monotonic() + 180, None
        body = (raw / "test" / "wave" / "0.sig").read_bytes()
        while time.monotonic() < deadline and answer is None:
            assert server.poll() is None, server.stdout.read()
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=body,
                               headers={"Content-Type": "text/x-signal"}, timeout=10)
                if r.status_code == 200:
                    answer = r.json()
            except httpx.HTTPError:
                time.sleep(1)
        assert answer is not None, "the server never answered"
        assert answer["label_name"] in ("ramp", "wave") and answer["levels_tried"][0] == 2
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=b"1 2 3",
                         headers={"Content-Type": "text/x-signal"}, timeout=10)
        assert bad.status_code == 422 and "32 values" in bad.json()["error"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
