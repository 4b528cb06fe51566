"""Run a command under a parent that reaps none of its orphans until told: what PID 1 does in many containers.

``python -m tests.training.subreaper CMD ...`` makes itself a child subreaper (Linux
``PR_SET_CHILD_SUBREAPER``), starts CMD, and reaps only CMD. Every process CMD leaves behind is
re-parented here when its own parent dies, and once killed stays a zombie (state ``Z``, ``os.kill(pid, 0)``
succeeding) until this process's stdin closes; then it reaps them all and exits with CMD's status (128 + N
when a signal N killed it, as a shell reports it).
So the tests make real zombies on any Linux, whether or not the machine's PID 1 reaps orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    rc = child.wait()
    sys.stdin.read()  # the orphans stay zombies until the test closes our stdin
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return 128 - rc if rc < 0 else rc


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return int(text[text.rindex(")") + 2:].split()[1])


def state(pid: int) -> str:
    """The state letter of ``pid`` (R, S, Z ...); "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.rindex(")") + 2:].split()[0]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if ppid(int(entry)) == pid:
                    found.append(int(entry))
            except (OSError, ValueError):
                continue
    return found


def wait_until(condition, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` (a test's patience, not a bound the code under test must meet)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def orphan_zombie(script: str, *args: str, before_kill=None) -> tuple[subprocess.Popen, int, str]:
    """Run ``python -c script ARGS`` under this subreaper; ``script`` forks once, and one of the two prints a line
    when ready. Call ``before_kill(child pid)``, kill the middle process, then its child, whose parent has died:
    the child stays a zombie.

    Returns (the subreaper: close its stdin with ``communicate()`` to reap everything, the zombie's pid, the line).
    """
    keeper = subprocess.Popen([sys.executable, "-m", "tests.training.subreaper", sys.executable, "-c", script, *args],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = keeper.stdout.readline().strip()
    wait_until(lambda: children(keeper.pid) and children(children(keeper.pid)[0]), "the two-level fork")
    middle = children(keeper.pid)[0]
    grandchild = children(middle)[0]
    if before_kill is not None:
        before_kill(grandchild)
    os.kill(middle, signal.SIGKILL)
    wait_until(lambda: ppid(grandchild) == keeper.pid, "the grandchild re-parented to the subreaper")
    os.kill(grandchild, signal.SIGKILL)
    wait_until(lambda: state(grandchild) == "Z", "the killed grandchild a zombie")
    return keeper, grandchild, line


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
