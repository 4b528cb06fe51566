"""Keeping a training run in hand: ranks die with their launcher, SIGTERM means "checkpoint and stop",
and one live run at a time owns an output folder.

- ``die_with_parent``: Linux's PR_SET_PDEATHSIG. torchrun starts every rank in a session of its
  own, so killing the launcher's process group (even with SIGKILL) used to leave the ranks
  training on; now a rank gets SIGTERM when its parent dies, and torchrun gets SIGTERM when
  ``icpc train`` dies.
- ``StopRequest``: SIGTERM (what schedulers and Kubernetes send before preemption) and SIGINT
  set a flag; the training loop finishes its step, every rank agrees on the step, saves, exits 0.
- ``OutputLock``: ``OUTPUT/.lock`` names the holder (host, pid, start time, command). Locally an
  advisory ``flock`` (released by the kernel when the holder dies, however it dies); on an object
  store a lease renewed every ``LEASE_RENEW_S`` (stale after ``LEASE_STALE_S``).
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

LOCK_FILE = ".lock"
DYING_HOLDER_WAIT_S = 15.0       # s to wait for the lock of a holder whose process is already gone (still exiting)
STOPPED_FILE = "stopped.json"   # written by rank 0 when a stop request ended the run after a checkpoint
LEASE_RENEW_S = 20.0
LEASE_STALE_S = 90.0
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


def _holder_gone(held: str) -> bool:
    """The lock's writer ran on this host and its pid no longer exists: the lock is being released."""
    try:
        info = json.loads(held)
        if info["host"] != socket.gethostname():
            return False
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, OSError):  # unreadable, or a live pid of another user
        pass
    return False


def holder_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
            "command": " ".join(sys.argv)[:500]}


class _HolderExiting(FileExistsError):
    """The lock is held but its writer's process is gone on this host: it is being released."""


class OutputLock:
    """Exclusive ownership of an output folder by one live run; ``FileExistsError`` names the holder."""

    def __init__(self, out: str):
        self.out, self.path = out, storage.join(out, LOCK_FILE)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait_s: float = 0.0) -> "OutputLock":
        """Take the lock, retrying for up to ``wait_s`` seconds while a live holder has it.

        A holder whose process is already gone is waited for up to ``DYING_HOLDER_WAIT_S`` whatever
        ``wait_s`` is: a SIGKILLed process's pid vanishes before the kernel has closed its files.
        """
        storage.makedirs(self.out)
        deadline = time.monotonic() + wait_s
        exiting_until: float | None = None
        while True:
            try:
                if storage.is_local(self.path):
                    self._acquire_local()
                else:
                    self._acquire_lease()
                return self
            except _HolderExiting:
                if exiting_until is None:
                    exiting_until = time.monotonic() + DYING_HOLDER_WAIT_S
                if time.monotonic() >= max(deadline, exiting_until):
                    raise
                time.sleep(0.2)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _acquire_local(self) -> None:
        import fcntl

        fd = os.open(storage.local_path(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if _holder_gone(held):
                raise _HolderExiting(f"{self.out} is still locked by a run whose process is gone "
                                     f"({_describe(held)}): a process it left behind (a DataLoader worker?) may "
                                     f"hold {LOCK_FILE}; find it with `fuser {storage.local_path(self.path)}` "
                                     f"and stop it") from None
            raise FileExistsError(f"{self.out} is in use by a live training run ({_describe(held)}); stop it, "
                                  f"wait for it to finish, or train into another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        self._fd = fd
        _LOCK_FDS.add(fd)

    def _acquire_lease(self) -> None:
        if storage.exists(self.path):
            held = storage.read_text(self.path)
            with contextlib.suppress(ValueError, KeyError):
                if time.time() - json.loads(held)["renewed"] < LEASE_STALE_S:
                    raise FileExistsError(f"{self.out} is in use by a live training run ({_describe(held)}); stop "
                                          f"it, wait for it to finish, or train into another --output")
        info = holder_info()

        def renew() -> None:
            while True:
                storage.write_text(self.path, json.dumps({**info, "renewed": time.time()}))
                if self._stop.wait(LEASE_RENEW_S):
                    return

        self._thread = threading.Thread(target=renew, name="icpc-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            _LOCK_FDS.discard(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            storage.remove(self.path)


def check_unlocked(out: str) -> None:
    """Fail fast (before starting ranks) when a live run holds ``out``; the rank-0 lock is the real guard."""
    if storage.exists(out):
        OutputLock(out).acquire().release()


def _describe(held: str) -> str:
    try:
        info = json.loads(held)
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError):
        return "holder unknown"
