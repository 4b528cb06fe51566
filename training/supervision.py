"""Keeping a training run in hand: ranks die with their launcher, SIGTERM means "checkpoint and stop",
and one live run at a time owns an output folder.

- ``die_with_parent``: Linux's PR_SET_PDEATHSIG. torchrun starts every rank in a session of its
  own, so killing the launcher's process group (even with SIGKILL) used to leave the ranks
  training on; now a rank gets SIGTERM when its parent dies, and torchrun gets SIGTERM when
  ``icpc train`` dies.
- ``StopRequest``: SIGTERM (what schedulers and Kubernetes send before preemption) and SIGINT
  set a flag; the training loop finishes its step, every rank agrees on the step, saves, exits 0.
- ``OutputLock``: ``OUTPUT/.lock`` names the holder (host, pid, its start time in clock ticks, command).
  Locally an advisory ``flock``, released by the kernel when the holder dies, however it dies; a
  holder that is dead by ``/proc`` (gone, exiting, a zombie, its pid reused: ``liveness``) never
  blocks a resume. On an object store a lease object, taken by a conditional create (``lease``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time

from icpc import storage
from icpc.training import liveness
from icpc.training.lease import Lease

LOCK_FILE = ".lock"
LEFT_BEHIND_WAIT_S = 15.0        # s to wait for a live process left by a dead holder to close the lock
STOPPED_FILE = "stopped.json"   # written by rank 0 when a stop request ended the run after a checkpoint
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


class StopRequest:
    """A flag set by SIGTERM or SIGINT (installed from the main thread; elsewhere it is only a flag)."""

    def __init__(self) -> None:
        self.signal = ""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal)


# Local lock descriptors this process holds. A forked child (a DataLoader worker) would share the
# flock and keep it after its rank is killed, until the orphan notices and exits; the child closes
# its copies right after the fork, so the lock lives exactly as long as the rank that took it.
_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def holder_status(held: str) -> str:
    """``liveness.ALIVE`` / ``EXITING`` / ``GONE`` for the writer of a lock record; ``ALIVE`` when it cannot be
    judged (another host, an unreadable record): such a lock is only ever taken over by its release."""
    try:
        info = json.loads(held)
        if info["host"] != socket.gethostname():
            return liveness.ALIVE
        return liveness.process_status(int(info["pid"]), info.get("start_ticks"))
    except (ValueError, KeyError, TypeError):
        return liveness.ALIVE


def holder_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": liveness.start_ticks(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)[:500]}


class _HolderExiting(FileExistsError):
    """The lock's holder is dead and the only processes with the lock file open are exiting: the kernel
    is releasing it."""


class _LeftBehind(FileExistsError):
    """The lock's holder is dead but another live process (or one this user cannot see) holds the lock."""


class OutputLock:
    """Exclusive ownership of an output folder by one live run; ``FileExistsError`` names the holder."""

    def __init__(self, out: str):
        self.out, self.path = out, storage.join(out, LOCK_FILE)
        self._fd: int | None = None
        self._lease: Lease | None = None

    def acquire(self, wait_s: float = 0.0) -> "OutputLock":
        """Take the lock, retrying for up to ``wait_s`` seconds while a live holder has it.

        A dead holder (gone, a zombie, or a reused pid) never blocks: while its processes are
        still exiting this waits for the kernel to close their files, however long a loaded machine
        takes; a live process it left behind with the lock open (a forked worker) is waited for up
        to ``LEFT_BEHIND_WAIT_S``, then named.
        """
        storage.makedirs(self.out)
        deadline = time.monotonic() + wait_s
        left_since: float | None = None
        while True:
            try:
                if storage.is_local(self.path):
                    self._acquire_local()
                else:
                    self._acquire_lease()
                return self
            except _HolderExiting:
                time.sleep(0.05)
            except _LeftBehind:
                if left_since is None:
                    left_since = time.monotonic()
                if time.monotonic() >= max(deadline, left_since + LEFT_BEHIND_WAIT_S):
                    raise
                time.sleep(0.2)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _acquire_local(self) -> None:
        import fcntl

        path = storage.local_path(self.path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if holder_status(held) == liveness.ALIVE:
                raise FileExistsError(f"{self.out} is in use by a live training run ({_describe(held)}); stop it, "
                                      f"wait for it to finish, or train into another --output") from None
            _raise_for_keepers(self.out, path, held)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        self._fd = fd
        _LOCK_FDS.add(fd)

    def _acquire_lease(self) -> None:
        self._lease = Lease(self.path, holder_info, _describe).take(self.out)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            _LOCK_FDS.discard(self._fd)
            self._fd = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def check_unlocked(out: str) -> None:
    """Fail fast (before starting ranks) when a live run holds ``out``; the rank-0 lock is the real guard."""
    if storage.exists(out):
        OutputLock(out).acquire().release()


def _raise_for_keepers(out: str, path: str, held: str) -> None:
    """The holder of ``path`` is dead but its flock is taken: say whether that is its exit or a process left over."""
    keepers = {pid: liveness.process_status(pid) for pid in liveness.processes_holding(path)}
    live = [pid for pid, status in keepers.items() if status == liveness.ALIVE]
    if not live and liveness.EXITING in keepers.values():
        raise _HolderExiting(path)
    named = "; ".join(f"pid {pid}: {liveness.command_line(pid)[:200]}" for pid in live) or \
        f"no process this user can see; find it with `fuser {path}`"
    raise _LeftBehind(f"{out} is still locked although the run that took the lock is gone ({_describe(held)}): a "
                      f"process it left behind holds {LOCK_FILE} ({named}); stop it, then resume")


def _describe(held: str) -> str:
    try:
        info = json.loads(held)
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError):
        return "holder unknown"
