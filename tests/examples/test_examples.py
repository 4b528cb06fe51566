"""The examples of "Use ICPC in your own training loop", run as users run them on the test fixtures: plain DDP
under torchrun (every sample once per epoch; killed with SIGKILL mid-epoch and restarted from its own checkpoint
at the same and at another world size), Lightning Fabric with 2 processes, the Hugging Face Trainer on text."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import icpc
from tests.conftest import REPO
from tests.readers import index_rows

pytestmark = pytest.mark.integration
SMALL = ["--batch-size", "16", "--dim", "64", "--depth", "2"]


def torchrun(script: str, nproc: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            str(REPO / "examples" / script), *map(str, args)]


def run(cmd: list[str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


def accuracy(stdout: str) -> float:
    found = re.search(r"level-0 test accuracy: ([0-9.]+)", stdout)
    assert found, stdout
    return float(found.group(1))


def trace(out: Path, rank: int) -> list[dict]:
    path = out / f"trace-{rank}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def train_keys(data: Path) -> list[str]:
    return sorted(r["key"] for r in index_rows(data) if r["split"] == "train")


def own_loop(data: Path, out: Path, nproc: int) -> list[str]:
    return torchrun("own_loop.py", nproc, "--data", data, "--epochs", 2, "--output", out, "--trace",
                    "--checkpoint-every", 3, "--workers", 1, *SMALL)


@pytest.fixture(scope="module")
def straight(compressed, tmp_path_factory) -> tuple[Path, str]:
    """The uninterrupted two-rank run of examples/own_loop.py (2 epochs, traced)."""
    out = tmp_path_factory.mktemp("own")
    return out, run(own_loop(compressed, out, 2))


def test_own_loop_trains_every_sample_once_per_epoch_and_prints_its_accuracy(compressed, straight):
    out, stdout = straight
    assert accuracy(stdout) > 0.15                                   # 10 classes: chance is 0.1
    steps = [trace(out, 0), trace(out, 1)]
    assert len(steps[0]) == len(steps[1])                            # the ranks ran the same steps
    for epoch in (0, 1):
        trained = Counter(k for t in steps for line in t if line["epoch"] == epoch for k in line["keys"])
        assert sorted(trained) == train_keys(compressed) and set(trained.values()) == {1}


def rank_pids(torchrun_pid: int) -> list[int]:
    """The example's rank processes: torchrun's children running own_loop.py."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    return [int(p) for p in children if b"own_loop.py" in Path(f"/proc/{p}/cmdline").read_bytes()]


def kill_mid_epoch(data: Path, out: Path) -> dict:
    """Start the two-rank run, SIGKILL one rank after a few steps; returns the checkpoint's loader state."""
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(own_loop(data, out, 2), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while len(trace(out, 0)) < 5 or not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-6000:]}"
            assert time.monotonic() < deadline, "no 5 traced steps within 300 s"
            time.sleep(0.02)
        os.kill(rank_pids(proc.pid)[-1], signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["loader"]
    assert state["batches"] > 0, f"the checkpoint is at an epoch end ({state}): not a mid-epoch kill"
    return state


def covered(lines: list[dict], state: dict) -> list[dict]:
    """The traced steps the checkpoint holds (a killed run traced a few more it will train again)."""
    at = (state["epoch"], len(state["segments"]), state["batches"])
    return [x for x in lines if (x["epoch"], x["segments"], x["done"]) <= at]


def test_own_loop_killed_mid_epoch_resumes_with_exactly_the_remaining_batches(compressed, straight, tmp_path):
    killed = tmp_path / "killed"
    state = kill_mid_epoch(compressed, killed)
    before = {r: covered(trace(killed, r), state) for r in (0, 1)}
    for r in (0, 1):
        (killed / f"trace-{r}.jsonl").unlink()
    alone = tmp_path / "alone"
    shutil.copytree(killed, alone)

    # the same world size: each rank's keys per step equal the uninterrupted run's
    stdout = run(own_loop(compressed, killed, 2))
    assert f"resumed at epoch {state['epoch']}, batch {state['batches']}" in stdout
    for r in (0, 1):
        got = [(x["epoch"], x["keys"]) for x in before[r] + trace(killed, r)]
        assert got == [(x["epoch"], x["keys"]) for x in trace(straight[0], r)]

    # one rank instead of two: the rest of the epoch re-planned, each remaining sample trained once
    run(own_loop(compressed, alone, 1))
    for epoch in range(state["epoch"], 2):
        trained = Counter(k for lines in (before[0], before[1], trace(alone, 0)) for x in lines
                          if x["epoch"] == epoch for k in x["keys"])
        assert sorted(trained) == train_keys(compressed) and set(trained.values()) == {1}, epoch


def test_fabric_example_trains_on_two_processes_and_saves_the_loader_state(compressed, tmp_path):
    stdout = run([sys.executable, str(REPO / "examples" / "fabric_loop.py"), "--data", str(compressed),
                  "--epochs", "1", "--devices", "2", "--output", str(tmp_path), *SMALL])
    assert 0.0 <= accuracy(stdout) <= 1.0
    saved = torch.load(tmp_path / "fabric.ckpt", map_location="cpu", weights_only=True)
    assert saved["loader"]["epoch"] == 1 and saved["loader"]["batches"] == 0 and saved["loader"]["world_size"] == 2


def test_hf_trainer_example_runs_the_loaders_batches_on_two_ranks(text_compressed):
    stdout = run(torchrun("hf_trainer.py", 2, "--data", text_compressed, "--epochs", 2, "--batch-size", 16))
    ld = icpc.ICPCLoader(str(text_compressed), batch_size=16, rank=0, world_size=2, num_workers=0)
    lengths = []
    for epoch in (0, 1):
        ld.set_epoch(epoch)
        lengths.append(len(ld))
    # every batch of both epochs, no more (the Trainer stops at epochs x len(epoch 0) when a later epoch is longer)
    assert f"optimizer steps: {min(sum(lengths), 2 * lengths[0])}\n" in stdout
    assert 0.0 <= accuracy(stdout) <= 1.0
