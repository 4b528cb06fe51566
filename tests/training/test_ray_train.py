"""The training function launched by Ray Train (two workers on the local Ray) instead of torchrun, and
Ray Train restarting the workers from the last checkpoint after one is killed."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import pytest

from icpc.config import TrainConfig, finalize
from tests.readers import index_rows

pytestmark = pytest.mark.integration


def _config(data, out, **overrides):
    sets = ["model.dim=32", "model.depth=1", "threads=1", "loader_workers=1", "trace=true"]
    return finalize(TrainConfig(data=str(data), output=str(out), batch_size=16, **overrides), sets)


def test_ray_train_runs_the_training_and_restarts_a_killed_worker_from_the_last_checkpoint(compressed, ray_local,
                                                                                             tmp_path):
    from icpc.training.ray_train import run_ray_train

    trace = tmp_path / "ranks" / "trace-0.jsonl"
    killed = {}

    def kill_rank1_mid_epoch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if trace.exists() and any(json.loads(x)["batch"] >= 6 for x in trace.read_text().splitlines() if x):
                killed["pid"] = int((tmp_path / "ranks" / "rank-1.pid").read_text())
                os.kill(killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank1_mid_epoch, daemon=True)
    killer.start()
    run_ray_train(_config(compressed, tmp_path, epochs=2, checkpoint_every=2), num_workers=2, cpus_per_worker=0.5,
                  progress=False, max_failures=1)
    killer.join(5)
    assert killed, "rank 1 was never killed"
    assert int((tmp_path / "ranks" / "rank-1.pid").read_text()) != killed["pid"]  # a new worker took its place
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    train = sum(r["split"] == "train" for r in index_rows(compressed))
    assert int(rows[1]["samples"]) == train  # both ranks' samples summed by all_reduce: every sample once
    ranks = [[json.loads(x) for x in (tmp_path / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [x["steps_run"] for x in ranks[0]][-1] == [x["steps_run"] for x in ranks[1]][-1]
    assert (tmp_path / "last.pt").exists()
    records = [json.loads(x) for x in trace.read_text().splitlines()]
    batches = [(r["epoch"], r["batch"]) for r in records]
    epoch0 = sorted({b for e, b in batches if e == 0})
    assert epoch0 == list(range(len(epoch0)))  # every batch of the epoch ran, the restart filled the gap
    replayed = len(batches) - len(set(batches))
    assert replayed < 2 + 2  # at most the steps since the last checkpoint (every 2) ran twice
