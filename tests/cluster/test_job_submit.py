"""The same compress entry point submitted with ``ray job submit`` to a local ``ray start --head`` on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.readers import index_rows, manifest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (all held open until each is chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def ray_head(tmp_path):
    """A separate Ray head (its own process group, killed at the end) with the job API on 127.0.0.1.

    It keeps its sessions and its address file in a temp dir of its own: ``ray start`` writes the
    address into ``TEMP/ray_current_cluster``, and one left in the default /tmp/ray by a head that was
    killed would send a later plain ``ray.init()`` or ``serve run`` to a cluster that is gone.
    Every port it listens on is a free one, not Ray's fixed defaults: two suites on one machine (a
    second suite as the CPU hog of the other) each started a head, and the second one's dashboard
    agent could not bind 52365, so its job API never took a job (both loaded CI runs, 2026-12-07).
    """
    names = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")
    gcs, dash, *more = _free_ports(2 + len(names))
    ports = [f"--{name}={port}" for name, port in zip(names, more)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    temp = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes

    def start_head() -> subprocess.Popen:
        return subprocess.Popen([RAY, "start", "--head", "--block", f"--port={gcs}", f"--temp-dir={temp}",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                                 "--include-dashboard=true", "--disable-usage-stats", *ports],
                                env=env, stdout=open(tmp_path / "head.log", "a"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    head, restarts = start_head(), 0
    address = f"http://127.0.0.1:{dash}"
    try:  # the head goes even when it never took a job (a failed setup runs no teardown after the yield)
        deadline = time.time() + 300  # a loaded machine takes minutes
        while time.time() < deadline:  # the job API answers before its agent can take jobs: probe with a no-op job
            probe = subprocess.run([RAY, "job", "submit", "--address", address, "--", "true"], env=env,
                                   capture_output=True)
            if probe.returncode == 0:
                break
            if head.poll() is not None:
                log = (tmp_path / "head.log").read_text()
                # Ray gives a raylet a fixed 30 s to register; a busy machine can outlast it: start the head again
                started_too_slowly = ("timed out during startup" in log          # the raylet's 30 s
                                      or "Timed out waiting for node info" in log)  # the client server's wait
                assert started_too_slowly and restarts < 2, log
                _kill_group(head.pid)  # what the failed head left (GCS, agents)
                head, restarts = start_head(), restarts + 1
            time.sleep(2)
        else:
            pytest.fail("ray head took no job in 300 s:\n" + (tmp_path / "head.log").read_text()
                        + "\nlast probe:\n" + probe.stdout.decode(errors="replace")[-2000:]
                        + probe.stderr.decode(errors="replace")[-2000:])
        yield address, env, gcs
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(head.pid)  # whatever of the group outlived the head (GCS, raylet, agents)
        shutil.rmtree(temp, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group (nothing, if its last process ended meanwhile)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_compress_runs_unchanged_under_ray_job_submit(ray_head, image_folder, tmp_path):
    address, env, gcs = ray_head
    out = tmp_path / "data"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--", sys.executable, "-m", "icpc.cli", "compress",
         "--modality", "image", "--input", str(image_folder), "--output", str(out), "--shard-samples", "100",
         "--limit", "50"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout and "compressed" in proc.stdout
    m = manifest(out)
    assert m["counts"]["test"] == 50 and m["shards"][0]["name"].startswith(m["version"] + "/")
    assert len(index_rows(out)) == sum(m["counts"].values())
    assert not (out / "in-progress.json").exists()
    # the head's address went to its own temp dir, not to the default one a later `ray.init()` reads
    default = Path("/tmp/ray/ray_current_cluster")
    assert not default.exists() or f":{gcs}" not in default.read_text()
