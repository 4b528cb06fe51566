"""Two-process gloo DDP under real torchrun on real shards: balanced steps, integrity, failures, exact and
elastic resume, SIGTERM, supervision of the ranks, the output lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from icpc.training import liveness
from tests.conftest import REPO, train_command, train_ddp
from tests.readers import index_rows, manifest
from tests.training.subreaper import state, wait_until

pytestmark = pytest.mark.integration


def metrics(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def traces(out: Path, ranks=(0, 1)) -> dict[int, list[dict]]:
    """Each rank's trace: one record per step (epoch, batch, level, rows trained, loss)."""
    return {r: [json.loads(x) for x in (out / "ranks" / f"trace-{r}.jsonl").read_text().splitlines()]
            for r in ranks if (out / "ranks" / f"trace-{r}.jsonl").exists()}


def train_rows(data: Path) -> list[str]:
    """Keys of the training split, in index order (what the trace's row numbers refer to)."""
    return [r["key"] for r in index_rows(data) if r["split"] == "train"]


def job_pids(out: Path) -> list[int]:
    """Processes of a training job: every process whose command line names its output folder."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(out) in cmd and int(entry) != os.getpid():
                found.append(int(entry))
    return found


def wait_gone(out: Path, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while job_pids(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    return job_pids(out)


def wait_for_trace(out: Path, epoch: int, batch: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Block until rank 0 has traced ``batch`` of ``epoch`` (0-based)."""
    path = out / "ranks" / "trace-0.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early:\n{proc.stdout.read() if proc.stdout else ''}"
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if any(r["epoch"] == epoch and r["batch"] >= batch for r in lines):
                return
        time.sleep(0.05)
    raise AssertionError(f"no trace of epoch {epoch} batch {batch} within {timeout} s")


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def same_weights(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x["step"] == y["step"]
    for name, tensor in x["model"].items():
        assert torch.equal(tensor, y["model"][name]), f"{name} differs"


# ----------------------------------------------------------------------------- balanced steps


def test_ranks_train_the_same_level_at_every_step_and_every_sample_once(straight_run, compressed):
    t = traces(straight_run)
    assert len(t[0]) == len(t[1]) > 10  # equal step counts
    keys = train_rows(compressed)
    for epoch in range(3):
        steps = [(a, b) for a, b in zip(t[0], t[1]) if a["epoch"] == epoch]
        assert steps and all(a["batch"] == b["batch"] and a["level"] == b["level"] for a, b in steps)
        assert all(abs(len(a["rows"]) - len(b["rows"])) <= 1 for a, b in steps)  # the same cost at every step
        rows = [r for a, b in steps for r in a["rows"] + b["rows"]]
        assert sorted(rows) == list(range(len(keys)))  # each training sample exactly once: none dropped or repeated
    levels = [int(x) for x in metrics(straight_run)[0]["levels"].split("/")]
    assert len(levels) == 5 and all(n > 0 for n in levels) and sum(levels) == len(keys)


def test_loss_falls_and_metrics_report_the_data_plane(straight_run):
    rows = metrics(straight_run)
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1, losses
    assert float(rows[-1]["val_acc"]) > 0.3  # 10 classes: chance is 0.1
    for r in rows:
        assert 0 <= float(r["data_wait"]) < 1 and int(r["samples_skipped"]) == 0
        assert 1.0 <= float(r["read_amplification"]) < 1.01  # one exact range read per payload
    assert (straight_run / "tb").is_dir() and any((straight_run / "tb").iterdir())
    state = torch.load(straight_run / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["loader"] == {"epoch": 3, "batches": 0, "segments": []}
    assert len(state["rng"]) == 2 and state["dataset"]["fingerprint"]
    assert len(list((straight_run / "checkpoints").glob("step-*.pt"))) == 2  # keep_checkpoints=2


def test_baseline_uses_only_level0(compressed, tmp_path):
    train_ddp(compressed, tmp_path, 1, "--baseline", "--set", "max_steps_per_epoch=3")
    levels = [int(x) for x in metrics(tmp_path)[0]["levels"].split("/")]
    assert levels[0] > 0 and sum(levels[1:]) == 0


# ----------------------------------------------------------------------------- integrity and failures


def test_a_truncated_shard_is_skipped_and_counted_and_both_ranks_finish(compressed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(compressed, data)
    victim = next(s for s in manifest(data)["shards"] if s["split"] == "train")
    path = data / victim["name"]
    path.write_bytes(path.read_bytes()[: victim["bytes"] // 2])
    out = tmp_path / "run"
    train_ddp(data, out, 1)
    row = metrics(out)[0]
    assert int(row["samples_skipped"]) == victim["samples"]
    assert int(row["samples"]) + victim["samples"] == len(train_rows(data))
    t = traces(out)
    assert len(t[0]) == len(t[1])


def test_a_rank_that_fails_stops_the_other_with_its_reason(compressed, tmp_path):
    out = tmp_path / "run"
    (out / "ranks" / "rank-1.jsonl").mkdir(parents=True)  # rank 1 cannot append its epoch record
    started = time.monotonic()
    proc = subprocess.run(train_command(compressed, out, 2, "--set", "collective_timeout_s=20"), cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "IsADirectoryError" in proc.stdout + proc.stderr and "rank-1.jsonl" in proc.stdout + proc.stderr
    assert time.monotonic() - started < 120
    assert not wait_gone(out, 10), "a rank outlived the failed job"
    assert not (out / "metrics.csv").exists()  # rank 0 never wrote the epoch


# ----------------------------------------------------------------------------- resume


def test_sigkill_of_the_whole_job_then_resume_equals_the_uninterrupted_run(straight_run, compressed, tmp_path):
    # under a parent that reaps no orphans (PID 1 in many containers): the killed torchrun, ranks and loader
    # workers, whose parents died first, stay zombies, and the resume must not take them for a live run
    out = tmp_path / "run"
    keeper = subprocess.Popen([sys.executable, "-m", "tests.training.subreaper",
                               *train_command(compressed, out, 3, "--checkpoint-every", "4")], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        wait_for_trace(out, epoch=1, batch=7, proc=keeper)
        job = [pid for pid in job_pids(out) if pid != keeper.pid]
        assert len(job) >= 4, job  # the launcher, torchrun, both ranks (and their loader workers)
        for pid in job:  # a lost node
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: all(liveness.process_status(pid) == liveness.GONE for pid in job), "the job dead")
        assert [pid for pid in job if state(pid) == "Z"], "no zombie was left: the test would not test the case"
        _resume_after_sigkill(straight_run, compressed, out)
    finally:
        for pid in job_pids(out):
            if pid != keeper.pid:
                os.kill(pid, signal.SIGKILL)
        keeper.communicate(timeout=60)  # reaps the zombies


def _resume_after_sigkill(straight_run: Path, compressed: Path, out: Path) -> None:
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["loader"]["epoch"] == 1 and saved["loader"]["batches"] > 0  # mid-epoch
    done = {r: [x for x in lines if (x["epoch"], x["batch"]) < (1, saved["loader"]["batches"])]
            for r, lines in traces(out).items()}
    for r in (0, 1):
        (out / "ranks" / f"trace-{r}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in done[r]))
    resumed = subprocess.run(train_command(compressed, out, 3, "--checkpoint-every", "4", "--resume"), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"batch {saved['loader']['batches']}, optimizer step {saved['step']}" in resumed.stdout
    assert traces(out) == traces(straight_run)  # the same rows, levels and losses at every step, on both ranks
    same_weights(out / "last.pt", straight_run / "last.pt")


@pytest.fixture(scope="module")
def terminated(compressed, tmp_path_factory):
    """A run stopped by SIGTERM to ``icpc train`` in epoch 2; (output folder, seconds to exit, launcher output)."""
    out = tmp_path_factory.mktemp("term")
    proc = start(train_command(compressed, out, 3))
    wait_for_trace(out, epoch=1, batch=5, proc=proc)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    return out, time.monotonic() - sent, proc.returncode, text


def test_sigterm_saves_and_exits_zero_within_the_stated_time(terminated):
    out, seconds, rc, text = terminated
    assert rc == 0, text
    assert seconds < 30, seconds  # README: one step plus the checkpoint write, within torchrun's 30 s grace
    stop = json.loads((out / "stopped.json").read_text())
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["loader"] == {"epoch": 1, "batches": stop["batches"], "segments": []} and stop["batches"] > 0
    assert "continue with --resume" in text
    assert not wait_gone(out, 10)


def test_resume_after_sigterm_continues_exactly(terminated, straight_run, compressed, tmp_path):
    src, *_ = terminated
    out = tmp_path / "run"
    shutil.copytree(src, out)
    resumed = subprocess.run(train_command(compressed, out, 3, "--resume"), cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert traces(out) == traces(straight_run)
    same_weights(out / "last.pt", straight_run / "last.pt")


def test_a_checkpoint_of_the_per_tensor_adamw_resumes_on_the_fused_one_exactly(terminated, straight_run, compressed,
                                                                              tmp_path):
    """Checkpoints written before 2026-12-03 (CPU runs used torch's per-tensor AdamW) carry that choice in
    their optimizer groups; a resume must not fall back to it."""
    src, *_ = terminated
    out = tmp_path / "run"
    shutil.copytree(src, out)
    state = torch.load(out / "last.pt", weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        assert group["fused"] is True  # what a new run saves
        group.update(fused=None, foreach=False)  # what the older trainer saved
    torch.save(state, out / "last.pt")
    resumed = subprocess.run(train_command(compressed, out, 3, "--resume"), cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert {g["fused"] for g in saved["optimizer"]["param_groups"]} == {True}
    assert traces(out) == traces(straight_run)
    same_weights(out / "last.pt", straight_run / "last.pt")


def each_sample_of_epoch_1_once_at_its_level(compressed: Path, steps: list[dict]) -> None:
    """The traced ``steps`` of epoch 1 (seed 0, uniform draw) trained every training sample once, at its level."""
    from icpc.contract import draw_levels

    rows = [r for x in steps for r in x["rows"]]
    assert sorted(rows) == list(range(len(train_rows(compressed))))  # each training sample exactly once
    hashes = np.array([r["key_hash"] for r in index_rows(compressed) if r["split"] == "train"], dtype=np.uint64)
    levels = draw_levels(0, 1, hashes, [1.0] * 5)
    assert all(levels[r] == x["level"] for x in steps for r in x["rows"])  # each at its drawn level


def test_elastic_resume_two_ranks_to_one_trains_each_remaining_sample_once(terminated, compressed, tmp_path):
    src, *_ = terminated
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = [x for r in traces(out).values() for x in r if x["epoch"] == 1]
    resumed = subprocess.run(train_command(compressed, out, 2, "--resume", nproc=1), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 -> 1 ranks" in resumed.stdout
    after = [x for x in traces(out)[0] if x["epoch"] == 1 and x not in before]
    each_sample_of_epoch_1_once_at_its_level(compressed, before + after)


def test_elastic_resume_one_rank_to_two_trains_each_remaining_sample_once(compressed, tmp_path):
    out = tmp_path / "run"
    proc = start(train_command(compressed, out, 2, nproc=1))
    wait_for_trace(out, epoch=1, batch=5, proc=proc)
    os.kill(proc.pid, signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "continue with --resume" in text, text
    before = [x for x in traces(out, ranks=(0,))[0] if x["epoch"] == 1]
    resumed = subprocess.run(train_command(compressed, out, 2, "--resume", nproc=2), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 -> 2 ranks" in resumed.stdout
    t = traces(out)
    after0 = [x for x in t[0] if x["epoch"] == 1 and x not in before]
    after1 = [x for x in t[1] if x["epoch"] == 1]
    assert after0 and [x["batch"] for x in after0] == [x["batch"] for x in after1]  # the two ranks in step
    after = after0 + after1
    each_sample_of_epoch_1_once_at_its_level(compressed, before + after)


def test_resume_refuses_a_different_run_naming_both_values(straight_run, compressed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    proc = subprocess.run(train_command(compressed, out, 4, "--resume", "--set", "seed=1"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "seed: checkpoint has 0, this run has 1" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- supervision


def test_killing_the_launchers_process_group_stops_every_rank(compressed, tmp_path):
    out = tmp_path / "run"
    proc = start(train_command(compressed, out, 3))
    wait_for_trace(out, epoch=0, batch=3, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)  # what `kill -9 -PGID` does; torchrun and the ranks have sessions of their own
    proc.wait(10)
    assert not wait_gone(out, 40), "ranks kept training after their launcher was killed"
    assert not (out / "metrics.csv").exists() or len(metrics(out)) < 3  # they did not train to the end


def test_a_second_run_into_a_held_output_is_refused_naming_the_holder(compressed, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from icpc.training.supervision import OutputLock; "
        f"OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(train_command(compressed, out, 1), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert f"pid {holder.pid}" in proc.stderr and "in use by a live training run" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
