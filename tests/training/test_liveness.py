"""Process liveness from /proc on real processes: a real zombie (a two-level fork whose middle parent dies, under
a parent that does not reap) is gone although ``os.kill(pid, 0)`` succeeds; a reused pid is gone; a process
whose main thread exited is alive and its files are found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from icpc.training import liveness
from tests.training.subreaper import orphan_zombie, state, wait_until

pytestmark = pytest.mark.skipif(not liveness.has_proc(), reason="reads /proc (Linux)")

# The middle process forks the grandchild and both sleep; the subreaper above them reaps neither.
TWO_LEVELS = ("import os, time\n"
              "if os.fork() == 0:\n    time.sleep(120); os._exit(0)\n"
              "print('forked', flush=True); time.sleep(120)")


def test_a_zombie_whose_parent_died_is_gone_although_os_kill_succeeds():
    keeper, zombie, _ = orphan_zombie(TWO_LEVELS)
    try:
        os.kill(zombie, 0)  # the trap: signal 0 to a zombie succeeds
        assert liveness.process_status(zombie) == liveness.GONE
        assert liveness.process_status(zombie, liveness.start_ticks(zombie)) == liveness.GONE
        assert liveness.command_line(zombie) == ""
    finally:
        keeper.communicate(timeout=60)  # closes its stdin: it reaps the zombie and exits
    assert keeper.returncode == 128 + signal.SIGKILL  # the middle process's status: killed


def test_a_live_process_is_alive_and_a_reused_pid_or_a_vanished_one_is_gone():
    me = os.getpid()
    assert liveness.process_status(me) == liveness.ALIVE
    assert liveness.process_status(me, liveness.start_ticks()) == liveness.ALIVE
    assert liveness.process_status(me, liveness.start_ticks() - 1) == liveness.GONE  # same pid, another process
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert liveness.process_status(done.pid) == liveness.GONE


def test_a_process_whose_main_thread_exited_is_alive_and_holds_its_files(tmp_path):
    # the main thread leaves with the exit syscall (not exit_group): /proc/PID/stat says Z, another thread runs
    held = tmp_path / "held"
    held.write_text("x")
    proc = subprocess.Popen([sys.executable, "-c", (
        "import ctypes, sys, threading, time\n"
        f"f = open({str(held)!r})\n"
        "threading.Thread(target=time.sleep, args=(120,)).start()\n"
        "print('ready', flush=True)\n"
        "ctypes.CDLL(None).syscall(60, 0)")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_until(lambda: state(proc.pid) == "Z", "the main thread gone")
        assert liveness.process_status(proc.pid) == liveness.ALIVE
        assert proc.pid in liveness.processes_holding(str(held))
        assert os.getpid() not in liveness.processes_holding(str(held))
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in liveness.processes_holding(str(held))
