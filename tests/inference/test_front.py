"""The HAProxy front on its own (real haproxy, a slow HTTP server on 127.0.0.1 behind it): its configuration,
its JSON 503 for a request whose queueing delay passes the budget, and that it never outlives its parent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from icpc.inference.front import (SHED_REASON, Front, check_front, free_port, front_config, haproxy_binary,
                                  resolve, start_front, stop_front)

# haproxy is part of the README's install (apt-get install haproxy): without it these tests fail, not skip.


class Upstream(BaseHTTPRequestHandler):
    """A stand-in for Serve's proxy: a POST holds its connection until the test releases it; GET answers at once."""

    arrived: threading.Event
    release: threading.Event

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.arrived.set()
        self.release.wait(60)
        self._answer(b'{"label": 1}')

    def do_GET(self):  # noqa: N802
        self._answer(b'{"status": "ok"}')

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def upstream():
    """(HOST:PORT, arrived, release) of a held-POST server on 127.0.0.1."""
    handler = type("Held", (Upstream,), {"arrived": threading.Event(), "release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", handler.arrived, handler.release
    handler.release.set()
    server.shutdown()


def test_front_settings_are_checked_and_auto_follows_the_binary(monkeypatch):
    assert any("choose auto, haproxy or none" in e for e in check_front("nginx", 32, 25))
    assert any("front_max_inflight=0" in e for e in check_front("none", 0, 25))
    assert any("front_queue_budget_ms=0" in e for e in check_front("none", 32, 0))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert resolve("auto") == "none" and resolve("haproxy") == "haproxy"
    assert any("apt-get install haproxy" in e for e in check_front("haproxy", 32, 25))
    assert check_front("auto", 32, 25) == []


def test_the_written_configuration_passes_haproxys_own_check(tmp_path):
    text = front_config("127.0.0.1", 8080, "127.0.0.1:8000", 32, 25, 30.0, str(tmp_path / "errors"))
    (tmp_path / "haproxy.cfg").write_text(text)
    done = subprocess.run([haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "timeout queue 25ms" in text and "maxconn 32" in text and "timeout server 40s" in text
    head, body = (tmp_path / "errors" / "503.http").read_bytes().decode().split("\r\n\r\n", 1)
    assert json.loads(body) == {"error": SHED_REASON, "status": 503}
    assert "Retry-After: 1" in head and "X-ICPC-Shed: front" in head and f"Content-Length: {len(body)}" in head


def test_a_request_that_waits_past_the_budget_gets_the_fronts_json_503(upstream):
    """One slot, held by a request the upstream keeps: every other predict request - a URL-encoded path too -
    is answered by HAProxy (JSON 503, Retry-After, x-icpc-shed); /healthz passes; after the release, 200."""
    address, arrived, release = upstream
    port = free_port()
    start_front("127.0.0.1", port, address, max_inflight=1, queue_budget_ms=20, request_timeout_s=30)
    url = f"http://127.0.0.1:{port}"
    try:
        with ThreadPoolExecutor(6) as pool:
            holder = pool.submit(httpx.post, f"{url}/v1/predict", content=b"x" * 100, timeout=60)
            assert arrived.wait(60), "the holder never reached the upstream"
            paths = ["/v1/predict"] * 3 + ["/v1/%70redict", "/image/v1/predict"]
            shed = list(pool.map(lambda path: httpx.post(url + path, content=b"x", timeout=60), paths))
            health = httpx.get(f"{url}/healthz", timeout=60)   # its own path: not behind the full slot
            assert not holder.done(), "the held request finished before the test released it"
            release.set()
            held = holder.result()
        assert held.status_code == 200 and held.json() == {"label": 1}
        for path, r in zip(paths, shed):
            assert r.status_code == 503 and r.json() == {"error": SHED_REASON, "status": 503}, (path, r.text)
            assert r.headers["retry-after"] == "1" and r.headers["x-icpc-shed"] == "front", path
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert httpx.post(f"{url}/v1/predict", content=b"x", timeout=60).status_code == 200   # the slot is free
    finally:
        release.set()
        stop_front("127.0.0.1", port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_a_second_front_on_a_taken_port_is_refused(upstream):
    """HAProxy binds without SO_REUSEPORT: a second server on the port is an error, not a silent split."""
    address, _, _ = upstream
    port = free_port()
    first = start_front("127.0.0.1", port, address, 4, 25, 30)
    try:
        second = Front("127.0.0.1", port, address, 4, 25, 30)
        with pytest.raises(RuntimeError, match=f"port {port}|another server"):
            second.start(timeout_s=20)
        assert second.process is None and not second.workdir.exists()   # stopped and cleaned up
        assert first.process.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        stop_front("127.0.0.1", port)


def test_the_front_does_not_outlive_a_parent_killed_with_sigkill(upstream, tmp_path):
    """kill -9 of the process that started the front: the kernel signals HAProxy (PR_SET_PDEATHSIG), which exits
    and frees the port. PID 1 here does not reap orphans, so "exited" is a zombie or no process at all."""
    port = free_port()
    code = (f"import time; from icpc.inference.front import start_front; "
            f"f = start_front('127.0.0.1', {port}, {upstream[0]!r}, 4, 25, 30); print(f.process.pid, flush=True); "
            f"time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        front_pid = int(parent.stdout.readline())
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def state(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"

    deadline = time.monotonic() + 30
    while state(front_pid) not in ("Z", "X", "gone") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(front_pid) in ("Z", "X", "gone"), f"HAProxy {front_pid} outlived its parent: {state(front_pid)}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_the_help_example_prints_a_configuration_haproxy_accepts(tmp_path):
    """`python -m icpc.inference.front --help`'s example, run: the configuration passes `haproxy -c`."""
    out = subprocess.run([sys.executable, "-m", "icpc.inference.front", "--upstream", "127.0.0.1:8000", "--port",
                          "8080", "--errors-dir", str(tmp_path / "errors")], capture_output=True, text=True, check=True)
    (tmp_path / "haproxy.cfg").write_text(out.stdout)
    done = subprocess.run([haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "bind 0.0.0.0:8080" in out.stdout and "server serve 127.0.0.1:8000 maxconn 16" in out.stdout
