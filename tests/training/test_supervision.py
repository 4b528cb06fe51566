"""The output lock on real processes: a live holder refuses a second run; a dead one (a zombie whose parent died,
under a parent that does not reap) never blocks; a process a dead holder left with the lock open is waited for,
then named; a forked child of the holder does not keep the lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from icpc.training import liveness, supervision
from icpc.training.supervision import OutputLock, holder_info, holder_status
from tests.conftest import REPO
from tests.training.subreaper import orphan_zombie, state, wait_until

pytestmark = pytest.mark.skipif(not liveness.has_proc(), reason="reads /proc (Linux)")

# Forks; the child takes the lock on argv[1], optionally starts `sleep argv[2]` with the lock's descriptor (a
# process it leaves behind holding the lock), prints "PID LEFT_PID" and sleeps until killed.
LOCK_HOLDER = (
    "import os, subprocess, sys, time\n"
    "from icpc.training.supervision import OutputLock\n"
    "if os.fork() == 0:\n"
    "    lock = OutputLock(sys.argv[1]).acquire()\n"
    "    left = subprocess.Popen(['sleep', sys.argv[2]], pass_fds=(lock._fd,)).pid if sys.argv[2] != '0' else 0\n"
    "    print(os.getpid(), left, flush=True)\n"
    "    time.sleep(120); os._exit(0)\n"
    "time.sleep(120)\n")


def test_a_live_holder_refuses_and_its_zombie_never_blocks(tmp_path):
    out = str(tmp_path / "run")

    def live_holder_refuses(holder: int) -> None:
        with pytest.raises(FileExistsError, match=f"in use by a live training run \\(host .*, pid {holder},"):
            OutputLock(out).acquire()

    keeper, holder, line = orphan_zombie(LOCK_HOLDER, out, "0", before_kill=live_holder_refuses)
    try:
        assert int(line.split()[0]) == holder and state(holder) == "Z"
        os.kill(holder, 0)  # a zombie: os.kill(pid, 0) still succeeds
        record = (tmp_path / "run" / ".lock").read_text()
        assert json.loads(record)["pid"] == holder and holder_status(record) == liveness.GONE
        OutputLock(out).acquire().release()  # at once (wait_s=0): nothing to wait for
    finally:
        keeper.communicate(timeout=60)


def test_a_process_a_dead_holder_left_with_the_lock_is_waited_for_then_named(tmp_path, monkeypatch):
    # the holder is a zombie while a process it started keeps the flock: a resume waits for that process (a
    # DataLoader worker on its way out), then names it
    keeper, _, line = orphan_zombie(LOCK_HOLDER, str(tmp_path / "a"), "2")
    try:
        left = int(line.split()[1])
        OutputLock(str(tmp_path / "a")).acquire().release()
        assert state(left) in ("Z", "")  # it got the lock because the process left behind had ended
    finally:
        keeper.communicate(timeout=60)

    monkeypatch.setattr(supervision, "LEFT_BEHIND_WAIT_S", 0.5)
    keeper, _, line = orphan_zombie(LOCK_HOLDER, str(tmp_path / "b"), "120")
    left = int(line.split()[1])
    try:
        with pytest.raises(FileExistsError, match=f"run that took the lock is gone .* left behind holds .lock "
                                                  f"\\(pid {left}: sleep 120\\)"):
            OutputLock(str(tmp_path / "b")).acquire()
    finally:
        os.kill(left, signal.SIGKILL)
        keeper.communicate(timeout=60)


def test_the_holder_record_judges_pid_start_time_and_host():
    assert holder_status(json.dumps(holder_info())) == liveness.ALIVE  # this process
    reused = {**holder_info(), "start_ticks": liveness.start_ticks() - 1}  # this pid, but another process
    assert holder_status(json.dumps(reused)) == liveness.GONE
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert holder_status(json.dumps({**holder_info(), "pid": done.pid, "start_ticks": None})) == liveness.GONE
    assert holder_status(json.dumps({**holder_info(), "pid": done.pid, "host": "another-host"})) == liveness.ALIVE
    assert holder_status("not json") == liveness.ALIVE  # unknown: only its release frees the lock


def test_a_forked_child_of_the_holder_does_not_keep_the_lock_after_the_holder_is_killed(tmp_path):
    # a rank's DataLoader workers are forked after rank 0 took the lock: they must not hold it on
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, time; from icpc.training.supervision import OutputLock; "
        f"OutputLock({str(out)!r}).acquire(); child = os.fork()\n"
        "if child == 0:\n    time.sleep(60); os._exit(0)\n"
        "print(child, flush=True); time.sleep(60)")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert liveness.process_status(child) == liveness.ALIVE  # the forked child lives on
        assert child not in liveness.processes_holding(str(out / ".lock"))
        OutputLock(str(out)).acquire().release()  # _LeftBehind if the child still held the flock
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    wait_until(lambda: state(child) in ("Z", ""), "the child killed")
