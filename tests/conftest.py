"""Shared fixtures: a small real Fashion-MNIST ImageFolder (with broken files), a local Ray, its compressed shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Ray 2.60 turns token auth on after the first ray.init() unless the mode is set explicitly;
# tests bind everything to 127.0.0.1 and run with auth off.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The Serve tests start Serve inside the session's Ray: its proxy gets the patience `icpc serve` gives it.
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
# Ray's workers at the tests' own priority, not Ray's nice 15 (as icpc.local_ray does for an embedded Ray);
# here also for the `ray start` heads and benches the tests start themselves. On a busy machine, nice-15
# workers beside nice-0 CPU hogs got ~1/30 of a core: Serve deployments did not start in 300 s.
os.environ.setdefault("RAY_worker_niceness", "0")

REPO = Path(__file__).resolve().parents[1]
# Fixtures that start real Ray, torchrun or Serve processes: a test using any of them (directly or
# through another fixture) is an integration test, so ``pytest -m "not integration"`` is the fast loop.
INTEGRATION_FIXTURES = {"ray_local", "compressed", "straight_run", "ray_head", "s3_server"}


def pytest_collection_modifyitems(items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
TRAIN_IMAGES, TEST_IMAGES = 600, 200
BROKEN = {  # file name -> bytes; each must land in the rejects table
    "truncated.png": None,        # filled from a real PNG, cut in half
    "empty.png": b"",
    "notes.txt": b"not an image",
}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A class-balanced Fashion-MNIST subset as PNGs, plus three broken files in train/Bag/."""
    from icpc.demo.fashion_mnist import build_fashion_mnist

    root = tmp_path_factory.mktemp("fmnist")
    build_fashion_mnist(root, TRAIN_IMAGES, TEST_IMAGES, seed=0)
    bag = root / "train" / "Bag"
    good = next(bag.glob("*.png")).read_bytes()
    for name, data in BROKEN.items():
        (bag / name).write_bytes(good[: len(good) // 2] if data is None else data)
    return root


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from icpc.local_ray import init_local_ray

    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def compressed(image_folder, ray_local, tmp_path_factory) -> Path:
    """``icpc compress`` output for ``image_folder`` (28,24,20,16,12 px; 4 px patches)."""
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    out = tmp_path_factory.mktemp("data")
    run_compress(finalize(CompressConfig(input=str(image_folder), output=str(out), shard_samples=100,
                                         overwrite=True)), progress=False)
    return out


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m icpc.cli ARGS`` in a fresh process; fails the test with its output on error."""
    proc = subprocess.run([sys.executable, "-m", "icpc.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"icpc {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


TRAIN_ARGS = ["--batch-size", "16", "--lr", "3e-3", "--set", "model.dim=64", "--set", "model.depth=2",
              "--set", "threads=1", "--set", "loader_workers=1", "--set", "trace=true",
              "--set", "collective_timeout_s=60"]


def train_ddp(data: Path, out: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    """``icpc train`` with two gloo processes under torchrun, sized for tests."""
    return run_cli("train", "--nproc-per-node", "2", "--data", str(data), "--output", str(out),
                   "--epochs", str(epochs), *TRAIN_ARGS, *extra)


def train_command(data: Path, out: Path, epochs: int, *extra: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", str(nproc), "--data", str(data),
            "--output", str(out), "--epochs", str(epochs), *TRAIN_ARGS, *extra]


@pytest.fixture(scope="session")
def straight_run(compressed, tmp_path_factory) -> Path:
    """A 3-epoch two-process ICPC training run on ``compressed``, traced, a step checkpoint every 4 steps
    (shared by training and inference tests, and the uninterrupted reference of the resume tests)."""
    out = tmp_path_factory.mktemp("icpc")
    train_ddp(compressed, out, 3, "--checkpoint-every", "4")
    return out


@pytest.fixture(scope="session")
def text_compressed(ray_local, tmp_path_factory) -> Path:
    """A small text dataset (WordNet glosses of 4 classes, 48 tokens at most) for the data API and examples."""
    from icpc.config import finalize
    from icpc.demo.wordnet import build_wordnet_glosses
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    root = tmp_path_factory.mktemp("glosses")
    build_wordnet_glosses(root, 240, 80, seed=0, classes=4)
    out = tmp_path_factory.mktemp("text_data")
    run_compress(finalize(CompressConfig(modality="text", input=str(root / "glosses.jsonl"), output=str(out),
                                         shard_samples=100), ["text.max_len=48", "text.vocab_size=3000"]),
                 progress=False)
    return out
