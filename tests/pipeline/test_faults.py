"""Faults on real Ray: a killed worker, a killed driver and --resume, inputs that abort or hang their decoder,
the reject guard, bounded retries and a safe --overwrite. Outputs are checked with independent readers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.pipeline.inputs import small_folder
from tests.readers import index_rows, manifest, rejects_rows

PLUGIN = "tests.pipeline.poison_modality"
# the poison plugin sleeps this long per decode, so that a fault can strike mid-job (800 inputs: ~4 s of sleep per task slot)
SLOW = {"ICPC_MODALITIES": PLUGIN, "PYTHONPATH": str(REPO), "ICPC_TEST_DELAY_S": "0.02"}


# ----------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(d))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (never another user's or another test's processes)."""
    kids, found, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the CLI run and the Ray processes it started) and wait for them."""
    for _ in range(50):
        alive = [int(d) for d in os.listdir("/proc") if d.isdigit() and session_of(int(d)) == sid and _alive(int(d))]
        if not alive:
            return
        for p in alive:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def start_cli(tmp: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """``icpc ARGS`` in a new session (so that everything it starts can be killed), output to files in ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "icpc.cli", *args], cwd=REPO, env={**os.environ, **env},
                            stdout=open(tmp / "stdout", "w"), stderr=open(tmp / "stderr", "w"),
                            start_new_session=True)


def finish_cli(proc: subprocess.Popen, tmp: Path, timeout: float = 600) -> tuple[int, str, str]:
    try:
        rc = proc.wait(timeout)
    finally:
        kill_session(proc.pid)
    return rc, (tmp / "stdout").read_text(), (tmp / "stderr").read_text()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before {what}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def parts(out: Path) -> list[Path]:
    return sorted(out.glob("v-*/_run/parts/*.json"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_dataset(a: Path, b: Path) -> None:
    """Shards byte-identical (by file name), the same index rows but for the version folder in shard names."""
    ma, mb = manifest(a), manifest(b)
    assert [Path(s["name"]).name for s in ma["shards"]] == [Path(s["name"]).name for s in mb["shards"]]
    for sa, sb in zip(ma["shards"], mb["shards"]):
        assert sa["sha256"] == sb["sha256"] == sha(b / sb["name"]), sb["name"]
    def strip(rows):
        return [{**r, "shard": Path(r["shard"]).name} for r in rows]
    assert strip(index_rows(a)) == strip(index_rows(b))
    assert sorted(map(json.dumps, rejects_rows(a))) == sorted(map(json.dumps, rejects_rows(b)))


def once_each(out: Path, folder: Path) -> None:
    inputs = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    assert sorted(r["source"] for r in index_rows(out) + rejects_rows(out)) == inputs


def clean(out: Path) -> None:
    """Only the manifest and its version folder remain: no marker, run state, other version or temp file."""
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", manifest(out)["version"]])
    assert not list(out.glob("v-*/_run")) and not [p for p in out.rglob(".*") if ".tmp" in p.name]


def _compress(**kw):
    from icpc.config import finalize
    from icpc.pipeline.config import compress_config_class
    from icpc.pipeline.job import run_compress

    sets = kw.pop("sets", [])
    return run_compress(finalize(compress_config_class()(**kw), sets), progress=False)


@pytest.fixture
def poison_plugin(monkeypatch):
    """The test plugin registered here and named in ICPC_MODALITIES (which the job forwards to its workers)."""
    import importlib

    monkeypatch.setenv("ICPC_MODALITIES", PLUGIN)
    importlib.import_module(PLUGIN)


# ----------------------------------------------------------------------------- reject guard


def test_a_stage_over_the_reject_limit_fails_the_cli_naming_it(image_folder, tmp_path):
    """A wrong --input format: most files rejected at scan -> exit 2 before Ray starts, nothing written."""
    folder = small_folder(tmp_path / "in", image_folder, 6)
    for i in range(5):
        (folder / "train" / "Bag" / f"note{i}.txt").write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "icpc.cli", "compress", "--input", str(folder), "--output",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "stage 'scan' rejected 5 of 21 inputs (23.8%), over max_reject_fraction=0.05" in proc.stderr
    assert "note0.txt: unsupported extension '.txt'" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_read_rejects_over_the_limit_fail_the_job_and_resume_keeps_what_was_sealed(image_folder, ray_local, tmp_path):
    """Unreadable inputs (empty files: a missing mount looks the same) fail the run; the run stays resumable,
    and --resume with a raised limit keeps the shards sealed so far and accounts for every input once."""
    from icpc.pipeline.job import RejectLimitError

    folder = small_folder(tmp_path / "in", image_folder, 15)
    for i in range(4):
        (folder / "train" / "Coat" / f"empty{i}.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(RejectLimitError, match=r"stage 'read' rejected 3 of 44 inputs") as err:
        _compress(input=str(folder), output=str(out), shard_samples=2, max_in_flight=1)
    assert "file is empty" in str(err.value) and "--max-reject-fraction" in str(err.value)
    assert not (out / "manifest.json").exists()
    marker = json.loads((out / "in-progress.json").read_text())
    sealed = {p.name: p.stat().st_mtime_ns for p in (out / marker["version"]).glob("*.tar")}
    assert sealed and len(parts(out)) < marker["shards"]
    summary = _compress(input=str(folder), output=str(out), shard_samples=2, resume=True, max_reject_fraction=0.2)
    assert summary["reused_shards"] >= len(sealed) and summary["rejects_by_stage"] == {"read": 4}
    assert manifest(out)["version"] == marker["version"]
    for name, mtime in sealed.items():  # sealed shards were kept, not rewritten
        assert (out / marker["version"] / name).stat().st_mtime_ns == mtime
    once_each(out, folder)
    clean(out)


# ----------------------------------------------------------------------------- poison inputs


@pytest.mark.integration
def test_inputs_that_abort_or_hang_the_decoder_become_rejects(image_folder, ray_local, poison_plugin, tmp_path):
    folder = small_folder(tmp_path / "in", image_folder, 30)
    (folder / "train" / "Bag" / "abort.png").write_bytes(b"ICPC-ABORT")
    (folder / "train" / "Coat" / "hang.png").write_bytes(b"ICPC-HANG")
    out = tmp_path / "out"
    # In a loaded CI run (2026-12-07, load ~70) a good input of the abort's shard was rejected as a hang at
    # 5 s: most likely the first sample of a fresh child, which then still imported Pillow and its PNG plugin (26 ms of
    # CPU when quiet, the rest waiting for CPU and disk). The image modality's warm_up now imports them
    # before the child says it is ready, and the limit has 3 s more margin.
    summary = _compress(modality="poison", input=str(folder), output=str(out), shard_samples=8, sample_timeout_s=8)
    why = {Path(r["source"]).name: (r["stage"], r["error"]) for r in rejects_rows(out)}
    assert summary["retried_shards"] in (1, 2) and summary["rejects"] == 2, why
    assert why["abort.png"] == ("compress", "decoder crashed: its process was killed by signal SIGABRT")
    assert why["hang.png"] == ("compress", "decoder did not finish in 8 s (sample_timeout_s): killed as a hang")
    once_each(out, folder)
    # a retried shard holds what an undisturbed run writes for its other inputs
    for p in (folder / "train" / "Bag" / "abort.png", folder / "train" / "Coat" / "hang.png"):
        p.unlink()
    _compress(input=str(folder), output=str(tmp_path / "ref"), shard_samples=8)
    ref = {r["key"]: r for r in index_rows(tmp_path / "ref")}
    def same(row: dict) -> dict:  # where a sample lies depends on its shard; what it holds (CRC-32s) does not
        return {k: v for k, v in row.items() if k not in ("shard", "row") and not k.startswith("offset_")}
    assert len(ref) == len(index_rows(out))
    for r in index_rows(out):
        assert same(r) == same(ref[r["key"]])


@pytest.mark.integration
def test_a_slow_per_process_load_is_not_a_hang(image_folder, ray_local, poison_plugin, tmp_path):
    """A resource loaded once per process (text's teacher model) that takes longer than the per-sample
    timeout loads in the modality's warm-up, outside the timeout: no actor killed, nothing retried or
    rejected. (Before 2026-12-07 the first sample loaded it under the alarm: on a busy machine the
    teacher's actors died as hangs.)"""
    from tests.pipeline.poison_modality import WARM_UP_S

    folder = small_folder(tmp_path / "in", image_folder, 6)
    out = tmp_path / "out"
    timeout = WARM_UP_S / 2
    summary = _compress(modality="slowstart", input=str(folder), output=str(out), shard_samples=8,
                        sample_timeout_s=timeout)
    assert summary["rejects"] == 0 and summary["retried_shards"] == 0, summary
    assert summary["task_seconds"]["warm_up"] >= WARM_UP_S * 0.9, summary["task_seconds"]
    once_each(out, folder)


@pytest.mark.integration
def test_task_retries_are_bounded(image_folder, ray_local, poison_plugin, tmp_path):
    from icpc.pipeline.job import ShardFailedError

    folder = small_folder(tmp_path / "in", image_folder, 3, classes=("Bag",))
    (folder / "train" / "Bag" / "abort.png").write_bytes(b"ICPC-ABORT")
    with pytest.raises(ShardFailedError, match=r"failed 1 times, last: WorkerCrashedError.*--resume"):
        _compress(modality="poison", input=str(folder), output=str(tmp_path / "out"), task_retries=0,
                  max_reject_fraction=1.0)


# ----------------------------------------------------------------------------- overwrite


@pytest.mark.integration
def test_overwrite_builds_beside_the_old_dataset_and_switches(image_folder, ray_local, tmp_path):
    from icpc.dataset import open_dataset
    from icpc.pipeline.job import RejectLimitError

    folder = small_folder(tmp_path / "in", image_folder, 9)
    out = tmp_path / "out"
    _compress(input=str(folder), output=str(out), shard_samples=4)
    old = manifest(out)
    old_bytes = (out / "manifest.json").read_bytes()
    # an overwrite that fails half-way leaves the old dataset whole and readable
    for i in range(3):
        (folder / "train" / "Bag" / f"empty{i}.png").write_bytes(b"")
    with pytest.raises(RejectLimitError):
        _compress(input=str(folder), output=str(out), shard_samples=4, overwrite=True, max_in_flight=1)
    assert (out / "manifest.json").read_bytes() == old_bytes
    assert all(sha(out / s["name"]) == s["sha256"] for s in old["shards"])
    assert len(open_dataset(str(out)).table("train")) == old["counts"]["train"]
    # a re-run names the interrupted overwrite
    with pytest.raises(FileExistsError, match=r"interrupted run v-.* shards sealed\); pass --resume .* --overwrite"):
        _compress(input=str(folder), output=str(out), shard_samples=4)
    # the next overwrite discards the interrupted run, switches to its own version, removes the old one
    new = _compress(input=str(folder), output=str(out), shard_samples=4, overwrite=True, max_reject_fraction=0.5)
    assert new["version"] != old["version"] and manifest(out)["version"] == new["version"]
    assert not (out / old["version"]).exists()
    clean(out)
    once_each(out, folder)


# ----------------------------------------------------------------------------- killed processes (CLI runs)


@pytest.mark.integration
def test_a_killed_worker_is_retried_and_the_output_is_unchanged(image_folder, compressed, tmp_path):
    out = tmp_path / "data"
    proc = start_cli(tmp_path / "log", "compress", "--modality", "poison", "--input", str(image_folder), "--output",
                     str(out), "--shard-samples", "100", env=SLOW)
    try:
        workers = wait_for(lambda: [p for p in descendants(proc.pid) if cmdline(p).startswith("ray::run_shard")],
                           300, "a shard task to start", proc)
        time.sleep(0.5)
        os.kill(workers[0], signal.SIGKILL)
    finally:
        rc, stdout, stderr = finish_cli(proc, tmp_path / "log")
    assert rc == 0, stdout + stderr
    assert "WorkerCrashedError" in stderr and "retried 1 shards whose task died" in stdout
    same_dataset(compressed, out)
    clean(out)


@pytest.mark.integration
def test_a_killed_driver_is_resumed_reusing_the_sealed_shards(image_folder, compressed, tmp_path):
    out = tmp_path / "data"
    args = ["compress", "--modality", "poison", "--input", str(image_folder), "--output", str(out),
            "--shard-samples", "100"]
    proc = start_cli(tmp_path / "run1", *args, env=SLOW)
    try:
        wait_for(lambda: len(parts(out)) >= 2, 300, "two sealed shards", proc)
        os.kill(proc.pid, signal.SIGKILL)   # the driver only; its Ray processes go with it
        proc.wait(30)
        time.sleep(1)
    finally:
        kill_session(proc.pid)
    marker = json.loads((out / "in-progress.json").read_text())
    sealed = {p: (p.stat().st_mtime_ns, sha(p)) for p in (out / marker["version"]).glob("*.tar")
              if (out / marker["version"] / "_run" / "parts" / (p.stem + ".json")).exists()}
    assert len(sealed) >= 2 and not (out / "manifest.json").exists()

    again = subprocess.run([sys.executable, "-m", "icpc.cli", *args], cwd=REPO, env={**os.environ, **SLOW},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert f"holds an interrupted run {marker['version']}" in again.stderr and "of 9 shards sealed" in again.stderr
    assert "pass --resume to continue it or --overwrite to start over" in again.stderr

    proc = start_cli(tmp_path / "run2", *args, "--resume", env={**SLOW, "ICPC_TEST_DELAY_S": "0"})
    rc, stdout, stderr = finish_cli(proc, tmp_path / "run2")
    assert rc == 0, stdout + stderr
    reused = int(stdout.split("reused ")[1].split()[0])
    assert reused >= len(sealed)
    for path, (mtime, digest) in sealed.items():
        assert path.stat().st_mtime_ns == mtime and sha(path) == digest, path
    same_dataset(compressed, out)
    clean(out)
