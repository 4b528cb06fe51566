"""Decode and compress in a child process, so that an input which crashes or hangs its decoder costs one sample.

A native decoder that segfaults or calls ``abort()`` takes its whole process with it, and one that
hangs never returns: neither can be caught as an exception. A shard task whose first attempt died
(``pipeline/build.py``) therefore retries with ``Sandbox``: one long-lived child process compresses
the samples one by one; when the child dies, the sample it held becomes a reject naming the signal,
when it takes longer than the per-sample timeout it is killed and the sample is rejected as a hang,
and a fresh child takes the next sample. The child is this module run as ``python -m``;
parent and child exchange length-prefixed pickles over two pipes (their own, not stdout, which
the child's libraries may print to). Pickle is safe here: both ends are this code in one task.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any

_HEADER = struct.Struct("!Q")
START_TIMEOUT_S = 300.0     # s for a child to import the modalities and say it is ready (a loaded node is slow)


class SampleError(Exception):
    """One sample failed in the child; ``str(exc)`` is the reject reason."""


def describe_exit(returncode: int) -> str:
    """``killed by signal SIGABRT`` / ``exited with status 3`` for a child's return code."""
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _write(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``; None at end of file; TimeoutError past ``deadline`` (time.monotonic)."""
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read(fd: int, deadline: float | None) -> Any:
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        raise EOFError
    data = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    if data is None:
        raise EOFError
    return pickle.loads(data)


class Sandbox:
    """``compress(data) -> (levels, meta)`` in a child process, ``timeout_s`` per sample.

    Raises ``SampleError`` with the reject reason: the compressor's own exception (as
    ``Type: message``, the same text the in-process path records), a crash of the child, or a hang.
    """

    def __init__(self, spec_json: dict[str, Any], timeout_s: float):
        self.spec_json, self.timeout_s = spec_json, timeout_s
        self.proc: subprocess.Popen | None = None

    def compress(self, data: bytes) -> tuple[list, dict[str, Any]]:
        if self.proc is None:
            self._start()
        try:
            _write(self.to_child, data)
            kind, value = _read(self.from_child, time.monotonic() + self.timeout_s)
        except TimeoutError:
            self._stop()
            raise SampleError(f"decoder did not finish in {self.timeout_s:g} s (sample_timeout_s): killed as a hang")
        except (EOFError, BrokenPipeError):
            code = self._stop()
            raise SampleError(f"decoder crashed: its process was {describe_exit(code)}")
        if kind == "error":
            raise SampleError(value)
        return value

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "icpc.pipeline.sandbox", str(req_r), str(res_w)],
                                     pass_fds=(req_r, res_w), env=env, stdin=subprocess.DEVNULL)
        os.close(req_r)
        os.close(res_w)
        self.to_child, self.from_child = req_w, res_r
        try:
            _write(self.to_child, self.spec_json)
            _read(self.from_child, time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError, BrokenPipeError):
            code = self._stop()
            raise RuntimeError(f"the compressor's child process did not start ({describe_exit(code)})") from None

    def _stop(self) -> int:
        """Kill the child (if alive), close the pipes; its return code."""
        proc, self.proc = self.proc, None
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def close(self) -> None:
        if self.proc is not None:
            self._stop()


def _serve(req_fd: int, res_fd: int) -> None:
    """The child: build the spec's modality, say ready, then compress one input per request until EOF."""
    from icpc.contract import Spec
    from icpc.pipeline.modalities import get_modality

    spec = Spec.from_json(_read(req_fd, None))
    modality = get_modality(spec.modality)
    if modality.warm_up is not None:  # within START_TIMEOUT_S, not the first sample's timeout
        modality.warm_up(spec)
    _write(res_fd, ("ready", None))
    while True:
        try:
            data = _read(req_fd, None)
        except EOFError:
            return
        try:
            out = modality.compress_bytes(data, spec)
            _write(res_fd, ("ok", (out.levels, out.meta)))
        except Exception as exc:  # noqa: BLE001 - the sample's failure is its reject reason, the child goes on
            _write(res_fd, ("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
