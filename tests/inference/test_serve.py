"""The Serve cascade over real HTTP on 127.0.0.1: real test images, every bad request, runtime reconfigure,
overload (503 at once, shed by queueing delay), a killed model replica (readiness and fast 503s until Serve replaces it)."""

from __future__ import annotations

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from icpc.inference.front import free_port
from icpc.inference.http_input import RequestError, read_payload
from icpc.pipeline.modalities.image import MODALITY, ImageConfig, build_spec

THRESHOLDS = [0.0, 0.9, 0.8, 0.7, 0.6]   # hand-picked: images stop at different levels
MAX_BODY = 20_000


# ----------------------------------------------------------------------------- pure parts


def test_one_decode_serves_any_levels_in_any_order(image_folder):
    data = next((image_folder / "test" / "Sneaker").glob("*.png")).read_bytes()
    spec = build_spec(ImageConfig())
    every = MODALITY.compress_bytes(data, spec).levels
    decoded = MODALITY.decode(data, spec)
    some = MODALITY.compress(decoded, spec, [3]).levels + MODALITY.compress(decoded, spec, [1]).levels
    assert [len(t) for t, _ in some] == [16, 36]
    for (t, p), i in zip(some, [3, 1]):
        np.testing.assert_array_equal(t, every[i][0])
        np.testing.assert_array_equal(p, every[i][1])


@pytest.mark.parametrize("body, ctype, status, reason", [
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, "must be an object"),
    (b'{"data": "%%%not-base64"}', "application/json", 400, "bad base64"),
    (b'{"data": ""}', "application/json", 400, "non-empty string"),
    (b'{"image": "AAAA"}', "application/json", 400, "unknown field"),
    (b'{"text": "a shoe"}', "application/json", 415, "serves image"),
    (b'{"data": "AAAA", "modality": "audio"}', "application/json", 415, "modality 'audio'"),
    (b"hello", "text/plain; charset=utf-8", 415, "carries text"),
    (b"hello", "application/xml", 415, "unsupported Content-Type"),
    (b"", "image/png", 400, "empty body"),
    (b"x" * 101, "image/png", 413, "over the 100 byte limit"),
    (json.dumps({"data": "A" * 200}).encode(), "application/json", 413, "over the 100 byte limit"),
])
def test_read_payload_refuses_with_a_reason(body, ctype, status, reason):
    with pytest.raises(RequestError) as err:
        read_payload(body, ctype, "image", max_bytes=100 if status == 413 else 10_000)
    assert err.value.status == status and reason in err.value.reason


def test_read_payload_accepts_json_raw_and_text():
    png = b"\x89PNG\r\n\x1a\nrest"
    assert read_payload(json.dumps({"data": base64.b64encode(png).decode()}).encode(), "application/json",
                        "image", 1000) == png
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert read_payload(json.dumps({"data": data_url, "modality": "image"}).encode(), "application/json",
                        "image", 1000) == png
    assert read_payload(png, "image/png", "image", 1000) == png
    assert read_payload(png, "application/octet-stream", "image", 1000) == png
    assert read_payload('{"text": "naïve"}'.encode(), "application/json", "text", 1000) == "naïve".encode()
    assert read_payload(b"plain words", "text/plain", "text", 1000) == b"plain words"


# ----------------------------------------------------------------------------- the real app


@pytest.fixture(scope="module")
def app(straight_run, ray_local, tmp_path_factory):
    """The Serve app on 127.0.0.1 with hand-picked thresholds; yields (url, config, deploy)."""
    from ray import serve

    from icpc.inference.serve import ServeConfig, deploy, start_serve, stop_serve

    folder = tmp_path_factory.mktemp("serve")
    (folder / "thresholds.json").write_text(json.dumps({"thresholds": THRESHOLDS}))
    cfg = ServeConfig(checkpoint=str(straight_run / "last.pt"), thresholds=str(folder / "thresholds.json"),
                      port=free_port(), max_body_bytes=MAX_BODY, batch_wait_timeout_s=0.05, ingress_cpus=0.2,
                      classifier_cpus=0.2, queue_delay_target_s=5.0)
    # A 5 s queueing budget: on a loaded CI machine 16 concurrent requests wait over the 0.1 s default and
    # would be shed; the overload tests set their own budget and max_inflight.
    url = start_serve(cfg)

    def redeploy(**changes):
        deploy(ServeConfig(**{**cfg.__dict__, **changes}))

    yield url, cfg, redeploy
    stop_serve()


@pytest.fixture(scope="module")
def client(app):
    import httpx

    with httpx.Client(base_url=app[0], timeout=60) as c:
        yield c


def behind_front(app) -> str:
    """Serve's own proxy, behind the HAProxy front when there is one: the ingress's admission seen directly."""
    url, cfg, _ = app
    return f"http://127.0.0.1:{cfg.serve_port}" if cfg.serve_port else url


@pytest.fixture(scope="module")
def images(image_folder):
    """Twelve real test PNGs (bytes), from several classes."""
    paths = sorted((image_folder / "test").glob("*/*.png"))
    return [p.read_bytes() for p in paths[:: max(1, len(paths) // 12)][:12]]


@pytest.fixture(scope="module")
def offline(straight_run):
    """The cascade by hand: the checkpoint's model on the pipeline's compression of each image."""
    import torch

    from icpc.modelio import load_model

    model, spec, state = load_model(straight_run / "last.pt")

    def decide(data: bytes, thresholds: list[float]) -> dict:
        levels = MODALITY.compress_bytes(data, spec).levels
        tried = []
        for level in [lv for lv in (4, 3, 2, 1, 0) if lv == 0 or thresholds[lv] <= 1]:
            tokens, positions = levels[level]
            with torch.no_grad():
                logits = model(torch.from_numpy(tokens[None]), torch.from_numpy(positions[None].astype(np.int64)),
                               level)
            probs = torch.softmax(logits.float(), 1)[0].numpy()
            tried.append(level)
            if float(probs.max()) >= thresholds[level] or level == 0:
                return {"label": int(probs.argmax()), "score": float(probs.max()), "level": level,
                        "levels_tried": tried, "label_name": state["classes"][int(probs.argmax())]}
        raise AssertionError("unreachable")

    return decide


@pytest.mark.integration
def test_health_and_info(client, straight_run):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"]["ready"] is True and health["model"]["device"] == "cpu"
    assert client.get("/livez").json()["status"] == "ok"
    info = client.get("/v1/info").json()
    assert info["modality"] == "image" and len(info["classes"]) == 10
    assert [lv["tokens"] for lv in info["ladder"]] == [49, 36, 25, 16, 9]
    assert [lv["name"] for lv in info["ladder"]] == ["side28", "side24", "side20", "side16", "side12"]
    assert info["thresholds"] == THRESHOLDS and info["order"] == [4, 3, 2, 1, 0]
    assert info["spec"]["reference_grid"] == [7, 7] and info["strategy"] == "consistent"
    assert info["limits"]["max_body_bytes"] == MAX_BODY


@pytest.mark.integration
def test_predict_raw_uploads_match_the_offline_cascade(client, images, offline):
    levels_seen = set()
    for data in images:
        r = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        got, want = r.json(), offline(data, THRESHOLDS)
        assert {k: got[k] for k in ("label", "label_name", "level", "levels_tried")} == \
               {k: want[k] for k in ("label", "label_name", "level", "levels_tried")}
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["tokens"] == sum([49, 36, 25, 16, 9][lv] for lv in got["levels_tried"])
        assert got["level_name"] == ["side28", "side24", "side20", "side16", "side12"][got["level"]]
        timing = got["timing_ms"]
        assert got["latency_ms"] > 0 and set(timing) == {"decode", "compress", "model", "forward", "queue"}
        assert timing["forward"] <= timing["model"] + 1e-3   # the model call's wall time includes its forward pass
        assert sum(timing[k] for k in ("decode", "compress", "forward", "queue")) <= got["latency_ms"] + 1e-3
        levels_seen.add(got["level"])
    assert levels_seen  # which levels answer depends on the model; all of them are checked above


@pytest.mark.integration
def test_predict_json_base64_gives_the_same_answer(client, images):
    raw = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).json()
    js = client.post("/v1/predict", json={"data": base64.b64encode(images[0]).decode(), "modality": "image"}).json()
    assert {k: js[k] for k in ("label", "level", "levels_tried")} == {k: raw[k] for k in ("label", "level", "levels_tried")}


@pytest.mark.parametrize("kwargs, status, reason", [
    ({"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
    ({"json": {"data": "not base64!!"}}, 400, "bad base64"),
    ({"json": {"data": base64.b64encode(b"GIF89a but not really").decode()}}, 422, "cannot decode the image"),
    ({"content": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "headers": {"Content-Type": "image/png"}}, 422, "cannot decode"),
    ({"content": b"a red shoe", "headers": {"Content-Type": "text/plain"}}, 415, "serves image"),
    ({"json": {"text": "a red shoe"}}, 415, "serves image"),
    ({"content": b"\x00" * (MAX_BODY + 1), "headers": {"Content-Type": "image/png"}}, 413, "byte limit"),
    ({"json": {"data": "A" * (MAX_BODY * 2)}}, 413, "byte limit"),
])
@pytest.mark.integration
def test_bad_requests_get_a_4xx_with_the_reason(client, kwargs, status, reason):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"] and r.json()["status"] == status


@pytest.mark.integration
def test_oversized_streamed_body_without_content_length_is_refused(client):
    def chunks():
        for _ in range(10):
            yield b"\x00" * (MAX_BODY // 4)

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "byte limit" in r.json()["error"]


@pytest.mark.integration
def test_unknown_route_and_method_answer_in_the_error_format(client):
    for r, status in ((client.get("/v1/nothing"), 404), (client.get("/v1/predict"), 405)):
        assert r.status_code == status and r.json()["status"] == status and r.json()["error"]


@pytest.mark.integration
def test_concurrent_requests_are_batched(client, images):
    from ray import serve

    from icpc.inference.serve import APP_NAME

    classifier = serve.get_deployment_handle("Classifier", APP_NAME)
    before = classifier.stats.remote().result()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda d: client.post("/v1/predict", content=d, headers={"Content-Type": "image/png"})
                              .status_code, images + images))
    after = classifier.stats.remote().result()
    assert codes == [200] * len(codes)
    items, batches = after["items"] - before["items"], after["batches"] - before["batches"]
    assert items >= len(codes) and batches < items, (items, batches)  # some forward pass served > 1 request


@pytest.mark.integration
def test_thresholds_change_at_runtime_without_a_redeploy(app, client, images, offline):
    from ray import serve

    from icpc.inference.serve import APP_NAME

    _, _, deploy = app
    classifier = serve.get_deployment_handle("Classifier", APP_NAME)
    before = client.get("/v1/info").json()
    model_pid = classifier.stats.remote().result()["pid"]
    deploy(set_thresholds=[0.0, 0.0, 0.0, 0.0, 0.0])       # the most compressed level always answers
    info = client.get("/v1/info").json()
    assert info["thresholds"] == [0.0] * 5 and info["thresholds_source"] == "user_config"
    assert info["pid"] == before["pid"], "the ingress replica was restarted instead of reconfigured"
    for data in images[:4]:
        got = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"}).json()
        assert got["levels_tried"] == [4] and got["tokens"] == 9
        assert got["label"] == offline(data, [0.0] * 5)["label"]
    deploy(set_thresholds=[0.0, 1.5, 1.5, 1.5, 1.5])       # every level off but the reference
    got = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).json()
    assert got["levels_tried"] == [0] and got["tokens"] == 49
    with pytest.raises(ValueError, match="set_thresholds: .* 5 numbers"):
        deploy(set_thresholds=[0.0, 0.5])                  # wrong length: refused before deploying
    with pytest.raises(FileNotFoundError, match="icpc calibrate"):
        deploy(thresholds=str(app[1].thresholds) + ".missing")   # no calibration and no override
    assert client.get("/v1/info").json()["thresholds"] == [0.0, 1.5, 1.5, 1.5, 1.5]
    deploy()                                               # back to the calibration file
    info = client.get("/v1/info").json()
    assert info["thresholds"] == THRESHOLDS and info["pid"] == before["pid"]
    deploy(batching=False)                                 # the model replica too: reconfigured, not replaced
    stats = classifier.stats.remote().result()
    assert stats["batching"] is False and stats["pid"] == model_pid
    deploy()



@pytest.mark.integration
def test_overload_is_answered_503_at_once_not_504(app, client, images):
    """Past max_inflight (a runtime setting) the ingress refuses at once: JSON 503 with Retry-After."""
    import httpx

    _, _, deploy = app
    pid = client.get("/v1/info").json()["pid"]
    deploy(max_inflight=2)
    try:
        def post(data):
            with httpx.Client(base_url=behind_front(app), timeout=60) as c:
                return c.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(post, images * 2))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0, \
            (statuses, sorted({r.json().get("error", "")[:160] for r in answers if r.status_code != 200}))
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and r.json()["status"] == 503
                assert "max_inflight=2" in r.json()["error"]
                assert r.elapsed.total_seconds() < 2.0   # refused, not queued until a timeout
        assert client.get("/v1/info").json()["pid"] == pid, "max_inflight is applied by reconfigure, not a restart"
    finally:
        deploy()
    assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 200


@pytest.mark.integration
def test_sustained_overload_is_shed_by_queueing_delay_with_json_503s(app, client, images):
    """64 clients posting back to back, ignoring Retry-After, against a 5 ms queueing budget and a ceiling of
    200: the measured delay, not the count, sheds. Every answer is a 200 with a label or a JSON 503 with
    Retry-After, the admitted count fell below the ceiling, and nothing waits past a generous bound."""
    import asyncio

    import aiohttp

    _, _, deploy = app
    url = behind_front(app)
    pid = client.get("/v1/info").json()["pid"]
    deploy(queue_delay_target_s=0.005, queue_delay_interval_s=0.05, max_inflight=200)

    async def burst(seconds: float = 6.0, clients: int = 64) -> list[tuple[int, dict, dict, float]]:
        out = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def worker(i: int) -> None:
                while loop.time() < end:
                    t0 = loop.time()
                    async with session.post("/v1/predict", data=images[i % len(images)],
                                            headers={"Content-Type": "image/png"}) as r:
                        out.append((r.status, await r.json(content_type=None), dict(r.headers), loop.time() - t0))
                    i += 1
            await asyncio.gather(*(worker(i) for i in range(clients)))
        return out

    try:
        answers = asyncio.run(burst())
        admission = client.get("/v1/info").json()["admission"]
        assert client.get("/v1/info").json()["pid"] == pid, "the admission settings are applied by reconfigure"
    finally:
        deploy()
    statuses = [status for status, *_ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0, sorted(set(statuses))
    shed = [(body, headers) for status, body, headers, _ in answers if status == 503]
    assert shed, "64 clients with no back-off against a 5 ms budget must be shed"
    for body, headers in shed:
        assert body["status"] == 503 and headers["Retry-After"] == "1"
        assert headers["Content-Type"] == "application/json"
    reasons = [body["error"] for body, _ in shed]
    assert any("queue_delay_target_s=0.005" in r for r in reasons), reasons[:3]
    for status, body, _, _ in answers:
        if status == 200:
            assert 0 <= body["label"] < 10 and body["timing_ms"]["queue"] >= 0
    assert max(seconds for *_, seconds in answers) < 60   # nothing queued until a timeout
    assert admission["target_s"] == 0.005 and admission["ceiling"] == 200 and admission["shed"] >= len(shed)
    assert admission["last_min_delay_s"] is not None
    assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 200


@pytest.mark.integration
def test_the_haproxy_front_sheds_a_request_whose_queueing_delay_passes_its_budget(app, client, images):
    """A second front on the same Serve with one slot and a 20 ms budget: while one request holds the slot
    (a 10 s batching wait; the ingress reports it in flight), the others are answered by HAProxy itself - JSON
    503, Retry-After, ``X-ICPC-Shed: front`` - before that request finishes; /healthz passes; then 200 again."""
    import time

    import httpx

    from icpc.inference.front import free_port, haproxy_binary, start_front, stop_front

    url, cfg, deploy = app
    assert haproxy_binary(), "haproxy is part of the README's install: apt-get install haproxy"
    assert cfg.front == "haproxy" and cfg.serve_port and cfg.serve_port != cfg.port, \
        "front=auto with haproxy installed puts the app behind a front"
    port = free_port()
    start_front("127.0.0.1", port, f"127.0.0.1:{cfg.serve_port}", max_inflight=1, queue_budget_ms=20,
                request_timeout_s=cfg.request_timeout_s)
    # one level tried (the most compressed always answers), where a lone request waits 10 s for batch-mates
    deploy(batch_wait_timeout_s=10.0, max_batch_size=32, set_thresholds=[0.0, 0.0, 0.0, 0.0, 0.0])
    front = f"http://127.0.0.1:{port}"
    try:
        def post(data):
            r = httpx.post(f"{front}/v1/predict", content=data, headers={"Content-Type": "image/png"}, timeout=60)
            return r, time.monotonic()

        with ThreadPoolExecutor(8) as pool:
            holder = pool.submit(post, images[0])
            deadline = time.monotonic() + 60
            while client.get("/v1/info").json()["admission"]["inflight"] < 1:   # the holder is in the ingress
                assert time.monotonic() < deadline and not holder.done(), "the holder never reached the ingress"
                time.sleep(0.05)
            shed = list(pool.map(post, images[1:7]))
            health = httpx.get(f"{front}/healthz", timeout=60)
            held, held_done = holder.result()
        assert held.status_code == 200, held.text
        for r, done in shed:
            assert r.status_code == 503 and r.headers["x-icpc-shed"] == "front", (r.status_code, r.text)
            assert r.headers["retry-after"] == "1" and r.headers["content-type"] == "application/json"
            assert r.json()["status"] == 503 and "queueing budget" in r.json()["error"]
            assert done < held_done, "a shed request was answered only after the slot freed: it was queued, not shed"
        assert health.status_code == 200, health.text
    finally:
        deploy()
        stop_front("127.0.0.1", port)
    assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 200


@pytest.mark.integration
def test_a_request_over_the_time_limit_gets_504(app, client, images):
    _, _, deploy = app
    pid = client.get("/v1/info").json()["pid"]
    deploy(request_timeout_s=0.001)   # a runtime setting (user_config): no restart
    try:
        assert client.get("/v1/info").json()["pid"] == pid
        r = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"})
        assert r.status_code == 504 and "request_timeout_s=0.001" in r.json()["error"]
    finally:
        deploy()
    assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 200


@pytest.mark.integration
def test_a_killed_model_replica_fails_fast_reports_not_ready_and_is_replaced(app, client, images):
    """SIGKILL the model replica's real process: until Serve's replacement answers, /healthz says 503
    and every request is answered 503 (JSON) within seconds instead of waiting; then all is 200 again."""
    import os
    import signal
    import time

    from ray import serve

    from icpc.inference.serve import APP_NAME

    classifier = serve.get_deployment_handle("Classifier", APP_NAME)
    victim = classifier.stats.remote().result()["pid"]
    assert client.get("/healthz").status_code == 200
    # an answer just before the kill: the ingress's "busy, not dead" grace is in force, so only Ray's word
    # that the replica died can mark the model down in time (CI 2026-12-07: 10.3 s without it)
    assert client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"}).status_code == 200
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    seen_not_ready, failures, recovered = False, [], None
    while time.monotonic() - killed < 90:
        t0 = time.monotonic()
        r = client.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"})
        waited = time.monotonic() - t0
        if r.status_code == 200:
            if failures:  # recovered after the gap
                recovered = time.monotonic() - killed
                break
        else:
            assert r.status_code == 503 and r.json()["status"] == 503 and r.headers["retry-after"] == "1", r.text
            failures.append(waited)
        health = client.get("/healthz")
        if health.status_code == 503:
            seen_not_ready = True
            assert "not ready" in health.json()["error"]
        time.sleep(0.2)
    assert failures and recovered, "the model replica's death was never seen, or Serve never replaced it"
    assert seen_not_ready, "readiness said 200 throughout the gap"
    assert max(failures) < 3.0, f"a request waited {max(failures):.1f} s in the gap instead of failing fast"
    new = classifier.stats.remote().result()["pid"]
    assert new != victim
    assert client.get("/healthz").status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize("problem", ["no thresholds", "not a checkpoint"])
def test_icpc_serve_refuses_a_bad_setup_before_ray_starts(problem, straight_run, tmp_path):
    import shutil
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    ckpt = tmp_path / "last.pt"
    if problem == "no thresholds":
        shutil.copy(straight_run / "last.pt", ckpt)   # a real checkpoint, never calibrated
        want = ["thresholds file", "not found", "icpc calibrate"]
    else:
        ckpt.write_bytes(b"PK\x03\x04 not a torch file")
        want = ["cannot be served", str(ckpt)]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "icpc.cli", "serve", "--checkpoint", str(ckpt), "--port", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert all(w in proc.stderr for w in want), proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 60


@pytest.mark.integration
def test_icpc_serve_command_binds_loopback_and_stops_on_sigterm(straight_run, images, tmp_path):
    """`icpc serve` in its own process (its own embedded Ray): URL printed, answers, exits cleanly."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from tests.conftest import REPO

    port = free_port()
    with open(tmp_path / "stderr.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "icpc.cli", "serve", "--checkpoint", str(straight_run / "last.pt"),
                                 "--port", str(port), "--set", "set_thresholds=[0,0,0,0,0]", "--set", "num_cpus=2"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ))
        try:
            printed = ""
            for line in proc.stdout:  # blocks until the server has printed its URL (or exited)
                printed += line
                if "Ctrl-C to stop" in line:
                    break
            assert f"at http://127.0.0.1:{port}" in printed, printed + (tmp_path / "stderr.log").read_text()[-3000:]
            r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=images[0],
                           headers={"Content-Type": "image/png"}, timeout=60)
            assert r.status_code == 200 and r.json()["levels_tried"] == [4]
            listening = subprocess.run(["ss", "-ltnH", "sport", "=", f":{port}"], capture_output=True,
                                       text=True, check=True).stdout.split("\n")
            listening = [line for line in listening if line.strip()]
            assert listening and all(f"127.0.0.1:{port}" in line for line in listening), listening
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    with socket.socket() as s:  # nothing listens on the port any more: the proxy went down with the app
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))

@pytest.mark.integration
@pytest.mark.parametrize("path", ["cluster/serve-config.yaml", "cluster/kuberay/rayservice.yaml"])
def test_cluster_configs_deploy_this_app(path, straight_run):
    """The `serve deploy` / RayService configs name build_app, its args and deployments as the code does."""
    import yaml

    from icpc.inference.serve import Cascade, Classifier, build_app, serve_config
    from tests.conftest import REPO

    doc = yaml.safe_load((REPO / path).read_text())
    if doc.get("kind") == "RayService":
        doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = doc["applications"]
    assert app["import_path"] == "icpc.inference.serve:build_app"
    from ray.serve.schema import ServeApplicationSchema

    ServeApplicationSchema(**app)  # Serve's own schema accepts every deployment option written there
    args = {**app["args"], "checkpoint": str(straight_run / "last.pt")}
    args.pop("thresholds")
    cfg = serve_config({**args, "set_thresholds": [0.0, 0.9, 0.9, 0.9, 0.9]})
    build_app(cfg)  # builds (the checkpoint is read, the override checked) without a cluster
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {Cascade.name, Classifier.name}
    assert set(deployments["Cascade"]["user_config"]) <= {"thresholds", "max_inflight", "request_timeout_s",
                                                          "queue_delay_target_s", "queue_delay_interval_s"}
    assert set(deployments["Classifier"]["user_config"]) == {"batching", "max_batch_size", "batch_wait_timeout_s"}
    # backpressure and scaling: Serve's own 503 past the queue, autoscaling ranges, a GPU slot for the model
    ingress, model = deployments["Cascade"], deployments["Classifier"]
    assert ingress["max_queued_requests"] > 0 and ingress["backpressure_config"]["retry_after_s"] >= 1
    assert ingress["max_ongoing_requests"] > cfg.max_inflight
    for d in (ingress, model):
        scaling = d["autoscaling_config"]
        assert d.get("num_replicas", "auto") == "auto" and 1 <= scaling["min_replicas"] < scaling["max_replicas"]
    assert "num_gpus" in model["ray_actor_options"]
