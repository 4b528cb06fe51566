"""Whether a process is alive, exiting or gone, read from ``/proc`` (a zombie is gone), and who holds a file open.

``os.kill(pid, 0)`` succeeds on a zombie, and a zombie can last: where PID 1 does not reap
orphans (many containers, whose PID 1 is the job's own process, and the machines these tests run
on), a killed process whose parent died first stays in state ``Z`` for good. A lock that asked
``os.kill`` refused to let a crashed run resume. Here a process is judged by what the kernel says
about each of its threads (``/proc/PID/task/TID/stat``):

- ``alive``: some thread runs (any state but ``Z``/``X``, without ``PF_EXITING``);
- ``exiting``: every thread is dead or has started to exit (a SIGKILL was delivered): the kernel
  is closing its files, and its locks go with them, without anything else having to happen;
- ``gone``: no such pid, only zombie threads, or the pid now names a process that started later
  than the one recorded (pids are reused; the start time, in clock ticks since boot, tells them apart).

Elsewhere than Linux (no ``/proc``) a process is ``alive`` while ``os.kill(pid, 0)`` succeeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ALIVE, EXITING, GONE = "alive", "exiting", "gone"
PF_EXITING = 0x4  # include/linux/sched.h: set when a thread starts do_exit()
PROC = "/proc"


@dataclass(frozen=True)
class ThreadStat:
    """The fields of ``/proc/PID/stat`` used here."""

    state: str        # R, S, D, T, Z, X ... (field 3)
    flags: int        # PF_* bits (field 9)
    start_ticks: int  # start time in clock ticks since boot (field 22)


def has_proc() -> bool:
    return os.path.isdir(os.path.join(PROC, "self", "task"))


def read_stat(path: str) -> ThreadStat | None:
    """Parse a ``stat`` file of ``/proc``; None when the process or thread no longer exists."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name (field 2) may hold spaces and ')'
    return ThreadStat(state=fields[0], flags=int(fields[6]), start_ticks=int(fields[19]))


def start_ticks(pid: int | None = None) -> int | None:
    """The start time of ``pid`` (default: this process) in clock ticks since boot; None without ``/proc``."""
    stat = read_stat(os.path.join(PROC, str(pid or os.getpid()), "stat"))
    return stat.start_ticks if stat else None


def process_status(pid: int, started: int | None = None) -> str:
    """``ALIVE``, ``EXITING`` or ``GONE`` for ``pid``; ``started`` (clock ticks) guards against a reused pid."""
    if not has_proc():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return GONE
        except PermissionError:
            return ALIVE
        return ALIVE
    leader = read_stat(os.path.join(PROC, str(pid), "stat"))
    if leader is None or (started is not None and leader.start_ticks != started):
        return GONE
    task = os.path.join(PROC, str(pid), "task")
    try:
        tids = os.listdir(task)
    except OSError:
        return GONE
    threads = [s for s in (read_stat(os.path.join(task, t, "stat")) for t in tids) if s is not None]
    running = [s for s in threads if s.state not in ("Z", "X")]
    if any(not s.flags & PF_EXITING for s in running):
        return ALIVE
    return EXITING if running else GONE


def _open_in(fd_dir: str, target: tuple[int, int]) -> bool:
    try:
        names = os.listdir(fd_dir)
    except OSError:  # gone, or another user's process
        return False
    for name in names:
        try:
            st = os.stat(os.path.join(fd_dir, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == target:
            return True
    return False


def processes_holding(path: str) -> list[int]:
    """Pids of the other processes that have ``path`` open (those this user may inspect; [] without ``/proc``).

    A process whose main thread has exited keeps its files in its other threads' tables, which
    are read too.
    """
    if not has_proc():
        return []
    try:
        st = os.stat(path)
    except OSError:
        return []
    target, me, found = (st.st_dev, st.st_ino), os.getpid(), []
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        tables = [os.path.join(PROC, entry, "fd")]
        leader = read_stat(os.path.join(PROC, entry, "stat"))
        if leader is not None and leader.state in ("Z", "X"):
            with_threads = os.path.join(PROC, entry, "task")
            try:
                tables = [os.path.join(with_threads, t, "fd") for t in os.listdir(with_threads)]
            except OSError:
                continue
        if any(_open_in(t, target) for t in tables):
            found.append(int(entry))
    return found


def command_line(pid: int) -> str:
    """The command line of ``pid`` (empty for a zombie or a process that is gone)."""
    try:
        with open(os.path.join(PROC, str(pid), "cmdline"), "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
