"""The shedding front of ``icpc serve``: HAProxy on the user's port, Serve's HTTP proxy behind it on loopback.

Why a front: a request that Serve sheds still costs about 25 ms of CPU (Serve's Python proxy and the
ingress's event loop) before its 503 is written; at 4x the saturating load those 503s took 1.2 of 2
cores from the admitted requests (BENCHMARKS.md, "Overload"). HAProxy answers a shed request itself,
in C, for tens of microseconds, before Serve sees it.

Admission by measured queueing delay: HAProxy lets at most ``front_max_inflight`` predict requests
into Serve at once (about the count that saturates the model: more only queue inside Serve) and
queues the rest in arrival order; a request that has waited ``front_queue_budget_ms`` without a slot
is answered ``503`` with a JSON body and ``Retry-After`` (``X-ICPC-Shed: front``). So a request gets
in only if its queueing delay stays within the budget, and every shed request is answered within
about the budget. ``/healthz`` has its own path to Serve, never queued behind predict requests: a
busy server is not reported dead. The ingress keeps its own queueing-delay admission behind the front
(``admission.py``), for deployments without one (``serve deploy`` on a cluster: put your load
balancer's equivalent in front; ``python -m icpc.inference.front --help`` prints this one).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install haproxy) or pass --set front=none"
START_TIMEOUT_S = 30.0
FRONT_NICE = -5              # the front's CPU priority where the user may raise it (root, CAP_SYS_NICE)
SERVER_TIMEOUT_GRACE_S = 10  # the front's server timeout is the app's request timeout plus this: above Serve's
                             # proxy's (the app's + 5 s), so the app's own JSON 504 comes first
HTTP_REQUEST_TIMEOUT_S = 30  # a request's headers and body must arrive within this (else the front's JSON 408)
READY_PATH = "/-/icpc-front-ready"   # answered by HAProxy itself with this front's token: the listener is ours
SHED_REASON = ("overloaded: no slot of the server behind the front freed within the front's queueing budget (or "
               "that server is not accepting connections); retry after Retry-After seconds")


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


def resolve(front: str) -> str:
    """``auto`` -> ``haproxy`` when the binary is on PATH, else ``none``; the others as given."""
    if front == "auto":
        return "haproxy" if haproxy_binary() else "none"
    return front


def check_front(front: str, max_inflight: int, queue_budget_ms: int) -> list[str]:
    errors = []
    if front not in ("auto", "haproxy", "none"):
        errors.append(f"front={front!r}: choose auto, haproxy or none")
    elif front == "haproxy" and not haproxy_binary():
        errors.append(f"front=haproxy: no haproxy on PATH; {INSTALL_HINT}")
    if max_inflight <= 0:
        errors.append(f"front_max_inflight={max_inflight}: must be positive")
    if queue_budget_ms <= 0:
        errors.append(f"front_queue_budget_ms={queue_budget_ms}: must be positive (ms)")
    return errors


def error_response(status: int, reason: str, extra: str = "") -> str:
    """A whole HTTP response in HAProxy's ``errorfile`` format, with the app's JSON error body."""
    body = json.dumps({"error": reason, "status": status})
    title = {400: "Bad Request", 408: "Request Timeout", 502: "Bad Gateway", 503: "Service Unavailable",
             504: "Gateway Timeout"}[status]
    return (f"HTTP/1.1 {status} {title}\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n{body}")


def front_config(host: str, port: int, upstream: str, max_inflight: int, queue_budget_ms: int,
                 request_timeout_s: float, errors_dir: str, retry_after_s: int = 1, token: str = "icpc") -> str:
    """The HAProxy configuration: one frontend on ``host:port``; every request through a slot-limited,
    time-bounded queue to ``upstream`` (Serve's proxy, ``HOST:PORT``), except the health and info routes,
    which go straight through (so a URL-encoded path cannot pass the slots: the exceptions are matched,
    not the predict route)."""
    errors = Path(errors_dir)
    errors.mkdir(parents=True, exist_ok=True)
    shed = f"Retry-After: {retry_after_s}\r\nX-ICPC-Shed: front\r\n"
    (errors / "503.http").write_text(error_response(503, SHED_REASON, shed))
    (errors / "502.http").write_text(error_response(502, "the server behind the front sent an invalid answer or "
                                                         "closed the connection (Serve's proxy restarting?)",
                                                    f"Retry-After: {retry_after_s}\r\n"))
    (errors / "504.http").write_text(error_response(504, "the server behind the front did not answer in time"))
    (errors / "400.http").write_text(error_response(400, "malformed HTTP request (refused by the front)"))
    (errors / "408.http").write_text(error_response(408, f"the request did not arrive within the front's "
                                                         f"{HTTP_REQUEST_TIMEOUT_S} s (timeout http-request)"))
    server_timeout = int(request_timeout_s) + SERVER_TIMEOUT_GRACE_S
    return f"""# written by icpc/inference/front.py (icpc serve, or python -m icpc.inference.front)
global
    nbthread 1
    noreuseport
    tune.bufsize 65536

defaults
    mode http
    option http-keep-alive
    option abortonclose
    retries 1
    timeout connect 2s
    timeout client 120s
    timeout http-request {HTTP_REQUEST_TIMEOUT_S}s
    timeout http-keep-alive 60s
    timeout server {server_timeout}s
    timeout queue {queue_budget_ms}ms
    errorfile 502 {errors / "502.http"}
    errorfile 503 {errors / "503.http"}
    errorfile 504 {errors / "504.http"}
    errorfile 400 {errors / "400.http"}
    errorfile 408 {errors / "408.http"}

frontend icpc
    bind {host}:{port}
    http-request return status 200 content-type text/plain string {token} if {{ path {READY_PATH} }}
    acl unqueued path_end /healthz /livez /v1/info
    acl unqueued path_beg /-/
    use_backend passthrough if unqueued
    default_backend predict

backend predict
    http-reuse always
    server serve {upstream} maxconn {max_inflight}

backend passthrough
    http-reuse always
    server serve {upstream}
"""


def free_port(host: str = "127.0.0.1", avoid: int = 0) -> int:
    """A port nothing listens on now (the kernel's choice), other than ``avoid``."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port != avoid:
            return port


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl   # resolved here: the child between fork and exec only calls it
PR_SET_PDEATHSIG = 1


def _front_child(parent: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    """The front ends with the thread that started it (PR_SET_PDEATHSIG: ``start_front`` insists on the main
    thread), also if that process died before the signal was armed, and runs ahead of the model's processes for
    the CPU where it may (``FRONT_NICE``): its work is tens of microseconds per request, and a shed request's
    answer is due within the budget. No imports, no allocation-heavy work: the parent has many threads."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)
    try:
        os.nice(FRONT_NICE)
    except OSError:   # not permitted (not root, no CAP_SYS_NICE): the default priority
        pass


class Front:
    """A running HAProxy front (its own process, which ends with the thread that started it)."""

    def __init__(self, host: str, port: int, upstream: str, max_inflight: int, queue_budget_ms: int,
                 request_timeout_s: float, retry_after_s: int = 1):
        self.host, self.port, self.upstream = host, port, upstream
        self.token = secrets.token_hex(8)
        self.workdir = Path(tempfile.mkdtemp(prefix="icpc-front-"))
        self.config_path = self.workdir / "haproxy.cfg"
        self.config_path.write_text(front_config(host, port, upstream, max_inflight, queue_budget_ms,
                                                 request_timeout_s, str(self.workdir / "errors"), retry_after_s,
                                                 self.token))
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "Front":
        """Start HAProxy and wait until this front (its token, not another listener on the port) answers."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError(f"front=haproxy: no haproxy on PATH; {INSTALL_HINT}")
        check = subprocess.run([binary, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"HAProxy refused {self.config_path}: {check.stderr.strip() or check.stdout.strip()}")
        log_path = self.workdir / "haproxy.log"
        with open(log_path, "wb") as log:   # the child keeps its own descriptor
            parent = os.getpid()
            self.process = subprocess.Popen([binary, "-db", "-f", str(self.config_path)], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, preexec_fn=lambda: _front_child(parent))
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.host if self.host not in ('0.0.0.0', '::') else '127.0.0.1'}:{self.port}{READY_PATH}"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"HAProxy exited ({self.process.returncode}) on start, port {self.port}: "
                                   f"{log_path.read_text(errors='replace').strip()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.read().decode() == self.token:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not answer on {self.host}:{self.port} within {timeout_s:g} s "
                                   f"(another server on that port?)")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


_RUNNING: dict[tuple[str, int], Front] = {}


def start_front(host: str, port: int, upstream: str, max_inflight: int, queue_budget_ms: int,
                request_timeout_s: float, retry_after_s: int = 1) -> Front:
    """Start (or restart) this process's front on ``host:port``; stopped by ``stop_front(s)`` or at exit.

    From the main thread only: HAProxy is signalled when the thread that started it ends (PR_SET_PDEATHSIG)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start the HAProxy front from the main thread: it ends with the thread that started it")
    if old := _RUNNING.pop((host, port), None):
        old.stop()
    front = Front(host, port, upstream, max_inflight, queue_budget_ms, request_timeout_s, retry_after_s).start()
    _RUNNING[(host, port)] = front
    return front


def stop_front(host: str, port: int) -> None:
    if front := _RUNNING.pop((host, port), None):
        front.stop()


def stop_fronts() -> None:
    while _RUNNING:
        _RUNNING.popitem()[1].stop()


atexit.register(stop_fronts)


def main(argv: list[str] | None = None) -> int:
    """Print the front's HAProxy configuration, for a Serve deployment that ``icpc serve`` does not start."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m icpc.inference.front", description=main.__doc__,
                                epilog="example: python -m icpc.inference.front --upstream 127.0.0.1:8000 --port 8080 "
                                       "--errors-dir /tmp/icpc-front-errors > /tmp/haproxy.cfg && "
                                       "haproxy -c -f /tmp/haproxy.cfg")
    p.add_argument("--host", default="0.0.0.0", help="address the front listens on")
    p.add_argument("--port", type=int, default=8080, help="port the front listens on")
    p.add_argument("--upstream", default="127.0.0.1:8000", help="Serve's HTTP proxy, HOST:PORT")
    p.add_argument("--max-inflight", type=int, default=16, help="predict requests let into Serve at once")
    p.add_argument("--queue-budget-ms", type=int, default=25, help="longest wait for a slot before a 503")
    p.add_argument("--request-timeout-s", type=float, default=30.0, help="the app's request_timeout_s")
    p.add_argument("--errors-dir", default="", help="where the JSON error responses are written "
                                                    "(default: a new temporary folder)")
    args = p.parse_args(argv)
    if errors := check_front("none", args.max_inflight, args.queue_budget_ms):
        p.error("; ".join(errors))
    sys.stdout.write(front_config(args.host, args.port, args.upstream, args.max_inflight, args.queue_budget_ms,
                                  args.request_timeout_s, args.errors_dir or tempfile.mkdtemp(prefix="icpc-front-")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
