"""The ICPC cascade as a Ray Serve app: an async HTTP ingress (``Cascade``) and a batching model (``Classifier``).

    icpc serve --checkpoint runs/icpc/last.pt            # embedded Ray, http://127.0.0.1:8000
    serve deploy cluster/serve-config.yaml               # icpc.inference.serve:build_app on a cluster
    curl -s http://127.0.0.1:8000/v1/predict -H 'Content-Type: image/png' --data-binary @shoe.png

``Cascade`` (the ingress; scale it with replicas, it holds no model) parses a request, decodes it
once and compresses only the levels the cascade tries, in a small thread pool, and awaits the
model through its deployment handle (no thread waits on a model call). ``Classifier`` holds the
model on the GPU when its replica has one (``num_gpus``), else on the CPU, and batches concurrent
requests per level (``LevelBatcher``: dynamic batching, forward passes in a worker thread so its
event loop keeps queueing). The ingress admits requests by measured queueing delay
(``admission.py``: when even the least-delayed request of an interval waited longer than
``queue_delay_target_s``, it admits fewer at once, up to ``max_inflight``) and answers the rest
503 + Retry-After before reading their bodies; it pings the model every ``PROBE_PERIOD_S`` and while the model
cannot answer, ``/healthz`` and ``/v1/predict`` say 503 at once instead of waiting. Every error is
``{"error": reason, "status": code}``. Thresholds come from ``icpc calibrate``'s file and change at
runtime through ``user_config``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures' types at runtime.
import asyncio
import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from icpc import storage
from icpc.contract import Spec
from icpc.local_ray import init_local_ray
from icpc.inference.admission import DelayAdmission, check_admission
from icpc.inference.front import INSTALL_HINT, check_front, free_port, resolve, start_front, stop_fronts
from icpc.inference.thresholds import THRESHOLDS_FILE, active_order, check_thresholds, load_thresholds
from icpc.inference.batcher import LevelBatcher
from icpc.inference.cascade import run_cascade_async
from icpc.inference.predict import classify, warmup_items
from icpc.inference.http_input import RequestError, check_declared_length, read_payload

APP_NAME = "icpc"
# ServeConfig fields that reach the running replicas through user_config (no restart).
RUNTIME_FIELDS = ("set_thresholds", "max_inflight", "queue_delay_target_s", "queue_delay_interval_s",
                  "request_timeout_s", "batching", "max_batch_size", "batch_wait_timeout_s")
# ServeConfig fields of the process that starts Serve (the front), not of the replicas: not build_app args.
DRIVER_FIELDS = ("front", "front_max_inflight", "front_queue_budget_ms", "serve_port")
PROBE_PERIOD_S = 0.5     # each ingress replica pings the model this often (s)
PROBE_TIMEOUT_S = 1.0    # a ping unanswered this long marks the model down: readiness and predict say 503 ...
BUSY_GRACE_S = 10.0      # ... unless the model answered a request this recently: then the ping only queued behind
                         # work (an overloaded replica is busy, not dead; marking it down would 503 admitted requests)
RETRY_AFTER_S = 1        # Retry-After (s) of a 503: a client backs off about one probe cycle
DEPLOY_TIMEOUT_S = 300.0  # how long deploy() waits for the apps to run (replica start-up on a loaded machine)
PROXY_READY_TIMEOUT_S = 60.0  # how long Serve's controller waits for its HTTP proxy to start (Serve's default: 5 s)
PROXY_GRACE_S = 5.0      # the proxy's timeout is the app's plus this, so the app's own JSON 504 comes first


@dataclass
class ServeConfig:
    """``icpc serve`` / ``build_app`` args: the model, its device, thresholds, HTTP limits, batching, scaling."""

    checkpoint: str = "runs/train/last.pt"   # from `icpc train`
    thresholds: str = ""                   # calibration file; "" = thresholds.json beside the checkpoint
    set_thresholds: list[float] = field(default_factory=list)  # runtime override via user_config; [] = the file
    host: str = "127.0.0.1"                # HTTP proxy address; anything else exposes an unauthenticated API
    port: int = 8000
    app_name: str = APP_NAME               # Serve application name (several models: one app each)
    route_prefix: str = "/"                # URL prefix of this app's routes (several apps: one prefix each)
    device: str = "auto"                   # model device: auto = cuda when the replica has a GPU, else cpu
    precision: str = "auto"                # auto = bf16 autocast on a GPU (fp16 if it lacks bf16), fp32 on CPU
    batching: bool = True                  # batch across requests, per level (off: one forward pass per request)
    max_batch_size: int = 32               # requests per forward pass
    batch_wait_timeout_s: float = 0.01     # at low load, how long a request waits for others of its level (s)
    max_concurrent_batches: int = 1        # forward passes in flight per model replica; 2 on a GPU overlaps copies
    classifier_replicas: int = 1           # model replicas (the minimum when autoscaling)
    classifier_max_replicas: int = 0       # > classifier_replicas: autoscale between the two; 0 = fixed
    classifier_cpus: float = 0.5           # Ray CPUs per model replica (fractional: the app fits 2 cores)
    classifier_gpus: float = 0.0           # Ray GPUs per model replica (0.25 = four replicas share one GPU)
    threads: int = 1                       # torch intra-op threads per model replica (match classifier_cpus)
    ingress_replicas: int = 1              # HTTP ingress replicas, which decode and compress (minimum if autoscaling)
    ingress_max_replicas: int = 0          # > ingress_replicas: autoscale between the two; 0 = fixed
    ingress_cpus: float = 0.25             # Ray CPUs per ingress replica
    decode_threads: int = 2                # threads per ingress replica that decode and compress requests
    max_body_bytes: int = 8_000_000        # larger bodies (and decoded payloads) get 413
    request_timeout_s: float = 30.0        # a request still running after this gets 504 (runtime: user_config)
    max_inflight: int = 48                 # the most predict requests an ingress replica works on at once; more get
                                           # 503 at once (runtime: user_config); the queueing-delay limit moves below it
    queue_delay_target_s: float = 0.1      # latency budget (s) of waiting in queues: when even the least-delayed
                                           # request of an interval waited longer, the replica admits fewer at once
                                           # and sheds the rest (503); 0 = a fixed max_inflight (runtime)
    queue_delay_interval_s: float = 0.25   # the window (s) whose least delay is compared with the target, and how
                                           # often the admitted count moves; ~ a few forward passes (runtime)
    max_ongoing_requests: int = 256        # Serve's per-ingress-replica limit, far above max_inflight: a replica Serve
                                           # sees at capacity sends its router into probe-and-retry stalls
    max_queued_requests: int = 64          # requests Serve queues for the ingress at each proxy; more: Serve's 503
    access_log: bool = False               # Serve's log line per request in each replica (~3% of a replica's CPU)
    num_cpus: int = 0                      # CPUs of the embedded Ray of `icpc serve` (0 = all)
    front: str = "auto"                    # haproxy: HAProxy on host:port sheds overload before Serve (front.py),
                                           # Serve's proxy behind it on loopback; none: Serve's proxy on host:port;
                                           # auto: haproxy when it is on PATH, else none
    front_max_inflight: int = 16           # predict requests the front lets into Serve at once: about the concurrency
                                           # at which throughput stops growing (bench/load_test.py --saturation)
    front_queue_budget_ms: int = 25        # a request that waited this long for one of those slots gets the front's 503
    serve_port: int = 0                    # Serve's proxy port behind the front (0: a free loopback port at start)

    def validate(self) -> list[str]:
        errors = []
        for name in ("port", "max_batch_size", "max_concurrent_batches", "classifier_replicas", "threads",
                     "ingress_replicas", "decode_threads", "max_body_bytes", "max_ongoing_requests"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)}: must be positive")
        for name in ("classifier_cpus", "classifier_gpus", "ingress_cpus", "batch_wait_timeout_s",
                     "classifier_max_replicas", "ingress_max_replicas", "max_queued_requests", "num_cpus"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)}: must be >= 0")
        for lo, hi in (("classifier_replicas", "classifier_max_replicas"), ("ingress_replicas", "ingress_max_replicas")):
            if 0 < getattr(self, hi) < getattr(self, lo):
                errors.append(f"{hi}={getattr(self, hi)} is below {lo}={getattr(self, lo)}: raise it or set 0 (fixed)")
        errors += check_admission(self.queue_delay_target_s, self.queue_delay_interval_s, self.max_inflight)
        errors += check_front(self.front, self.front_max_inflight, self.front_queue_budget_ms)
        if self.serve_port < 0 or (self.serve_port and self.serve_port == self.port):
            errors.append(f"serve_port={self.serve_port}: Serve's port behind the front must be free and not "
                          f"port={self.port} (0 = a free one at start)")
        if self.max_inflight >= self.max_ongoing_requests:
            errors.append(f"max_inflight={self.max_inflight} must be below max_ongoing_requests="
                          f"{self.max_ongoing_requests}, which leaves room for /healthz and the 503 answers")
        if not self.route_prefix.startswith("/"):
            errors.append(f"route_prefix={self.route_prefix!r}: must start with '/'")
        if self.request_timeout_s <= 0:
            errors.append(f"request_timeout_s={self.request_timeout_s}: must be positive")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            errors.append(f"precision={self.precision!r}: choose auto, fp32, bf16 or fp16")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            errors.append(f"device={self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda") and self.classifier_gpus <= 0:
            errors.append(f"device={self.device!r} needs classifier_gpus > 0: a Ray replica sees no GPU it did "
                          f"not reserve")
        return errors


class ModelUnavailable(Exception):
    """The model deployment cannot answer now (no replica, or it died): the request gets 503 + Retry-After."""


# ----------------------------------------------------------------------------- pure parts


def error(status: int, reason: str) -> JSONResponse:
    """The one error format: ``{"error": reason, "status": code}``; a 503 also says when to retry."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": reason, "status": status}, status_code=status, headers=headers)


def replicas(minimum: int, maximum: int, target_ongoing: float) -> dict[str, Any]:
    """Serve deployment options: a fixed ``num_replicas``, or autoscaling between ``minimum`` and ``maximum``
    on ``target_ongoing`` requests per replica."""
    if maximum <= minimum:
        return {"num_replicas": minimum}
    return {"num_replicas": "auto", "autoscaling_config": {
        "min_replicas": minimum, "max_replicas": maximum, "target_ongoing_requests": target_ongoing,
        "upscale_delay_s": 5.0, "downscale_delay_s": 60.0}}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``max_bytes``, declared or streamed."""
    check_declared_length(request.headers.get("content-length"), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"body is over the {max_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def awaited(response) -> Any:
    """A coroutine of a DeploymentResponse, for ``asyncio.wait_for`` / ``asyncio.wait``."""
    return await response


def timed(fn, *args) -> tuple[Any, float, float]:
    """``fn(*args)``, when it started (``perf_counter``, in the thread that ran it) and the seconds it ran."""
    t0 = time.perf_counter()
    return fn(*args), t0, time.perf_counter() - t0


# ----------------------------------------------------------------------------- deployments
# Serve ships these classes to the replicas by value: whatever they call must be defined above them.


@serve.deployment(name="Classifier", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.5})
class Classifier:
    """Holds the checkpoint (``weights_only=True``) on its device; batches requests across callers, per level.

    Its limit of ongoing requests is high on purpose: the ingress bounds the work (``max_inflight``),
    and a model replica that never refuses answers the ingress's pings at once, even under load.
    """

    def __init__(self, checkpoint: str, threads: int = 1, device: str = "auto", precision: str = "auto",
                 max_concurrent_batches: int = 1):
        import torch

        from icpc.devices import autocast_dtype, resolve_device
        from icpc.modelio import load_model

        torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.model, self.spec, _ = load_model(checkpoint, device=self.device)
        # Forward passes run in these threads, off the replica's event loop, which keeps taking requests
        # into the level queues (and answering pings) while the model computes.
        self.executor = ThreadPoolExecutor(max_concurrent_batches, thread_name_prefix="forward")
        self.local = threading.local()   # per forward thread: its CUDA stream
        levels = len(self.spec.ladder)
        self.batcher = LevelBatcher(self.run, levels, workers=max_concurrent_batches)
        self.batching = True
        self.batches, self.items, self.forward_s = [0] * levels, [0] * levels, 0.0
        for level in range(levels):  # the first pass of each shape pays allocation / CUDA set-up
            self.forward(level, warmup_items(self.spec, level, 1))
        self.batches, self.items, self.forward_s = [0] * levels, [0] * levels, 0.0

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``{"batching": bool, "max_batch_size": int, "batch_wait_timeout_s": s}``."""
        self.batching = bool(config.get("batching", True))
        self.batcher.max_batch_size = int(config.get("max_batch_size", 32))
        self.batcher.wait_s = float(config.get("batch_wait_timeout_s", 0.01))

    async def predict(self, tokens: np.ndarray, positions: np.ndarray, level: int) -> tuple[np.ndarray, float, float]:
        """Probabilities ``(C,)`` of one input at ``level``; the seconds of the forward pass that computed them
        (its batch's) and the seconds the input waited for it (in the level queue or for a forward thread):
        the sojourn time that admission control measures."""
        if not 0 <= level < len(self.spec.ladder):
            raise ValueError(f"level {level} is not in this model's ladder of {len(self.spec.ladder)} levels")
        arrived = time.perf_counter()
        if self.batching:
            probs, seconds, started = await self.batcher.submit(level, (tokens, positions))
        else:
            probs, seconds, started = (await self.run(level, [(tokens, positions)]))[0]
        return probs, seconds, max(0.0, started - arrived)

    async def run(self, level: int, items: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, float, float]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, level, items)

    def forward(self, level: int, items: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, float, float]]:
        """Per item: probabilities, the batch's forward seconds, and when the batch started (perf_counter)."""
        t0 = time.perf_counter()
        with self.stream():
            probs = classify(self.model, self.spec, level, items, self.dtype)  # .cpu() waits for the GPU
        seconds = time.perf_counter() - t0
        self.forward_s += seconds
        self.batches[level] += 1
        self.items[level] += len(items)
        return [(p, seconds, t0) for p in probs]

    def stream(self):
        """On a GPU, this forward thread's own CUDA stream: with max_concurrent_batches > 1 one batch's copies
        and kernels overlap another's instead of queueing on the default stream. On a CPU, nothing."""
        import contextlib

        import torch

        if not self.device.startswith("cuda"):
            return contextlib.nullcontext()
        if not hasattr(self.local, "stream"):
            self.local.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self.local.stream)

    async def ping(self) -> dict[str, Any]:
        """Answered on the event loop, whatever the model is computing: what the ingress's readiness asks.
        The replica's actor name lets the ingress ask Ray whether it is alive when a ping is late."""
        import ray

        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "device": self.device,
                "replica": [context.get_actor_name(), context.namespace]}

    def stats(self) -> dict[str, Any]:
        """Forward passes and requests so far, per level and in all (mean batch = items / batches), and the
        seconds spent in forward passes."""
        return {"pid": os.getpid(), "device": self.device, "batching": self.batching,
                "batches": sum(self.batches), "items": sum(self.items), "forward_s": self.forward_s,
                "level_batches": list(self.batches), "level_items": list(self.items)}


class ModelHealth:
    """Whether the model deployment answers, as one ingress replica sees it; requests waiting on the model
    are released (503) the moment it goes down."""

    def __init__(self):
        self.ready: bool | None = None     # None: not probed yet
        self.reason = "not probed yet"
        self.since = time.time()
        self.info: dict[str, Any] = {}
        self.went_down = asyncio.Event()
        self.last_answer = float("-inf")   # time.monotonic() of the model's newest answer to a request
        self.replicas: dict[str, str] = {}  # actor name -> namespace of every model replica that answered a ping

    def answered(self) -> None:
        """A request got its answer from the model: proof of life that a ping queued behind work lacks."""
        self.last_answer = time.monotonic()

    def busy(self) -> bool:
        """True when the model answered a request within BUSY_GRACE_S: a late ping means queued, not dead."""
        return time.monotonic() - self.last_answer < BUSY_GRACE_S

    def up(self, info: dict[str, Any]) -> None:
        if not self.ready:
            self.ready, self.reason, self.since = True, "answering", time.time()
            self.went_down = asyncio.Event()
        name, namespace = info.pop("replica", (None, None))
        if name:
            self.replicas[name] = namespace
        self.info = info

    def down(self, reason: str) -> None:
        if self.ready is not False:
            self.since = time.time()
        self.ready, self.reason = False, reason
        self.went_down.set()

    def describe(self) -> dict[str, Any]:
        return {"ready": bool(self.ready), "reason": self.reason, "for_s": round(time.time() - self.since, 3),
                **self.info}


api = FastAPI(title="ICPC cascade", description="Variable-effort classification of compressed inputs")


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error(422, f"invalid request: {exc.errors()}")


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error(500, f"internal error: {type(exc).__name__}: {exc}")


@serve.deployment(name="Cascade", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Cascade:
    """HTTP ingress: admits, size-checks and parses a request, decodes it once, then compresses and
    classifies level by level, awaiting the Classifier's handle."""

    def __init__(self, classifier, model: dict[str, Any], thresholds: list[float] | None, source: str,
                 limits: dict[str, Any]):
        from icpc.pipeline.modalities import get_modality

        self.classifier, self.model, self.limits = classifier, model, limits
        self.spec = Spec.from_json(model["spec"])
        self.modality = get_modality(self.spec.modality)
        self.file_thresholds, self.file_source = thresholds, source
        self.thresholds, self.source = thresholds, source
        self.pool = ThreadPoolExecutor(limits["decode_threads"], thread_name_prefix="decode")
        self.health = ModelHealth()
        self.probe: asyncio.Task | None = None
        self.admission = DelayAdmission(limits["queue_delay_target_s"], limits["queue_delay_interval_s"],
                                        limits["max_inflight"], time.monotonic())

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``{"thresholds": [per level] or null (= the calibration file), "max_inflight": n,
        "queue_delay_target_s": s, "queue_delay_interval_s": s, "request_timeout_s": s}``."""
        value = config.get("request_timeout_s")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"user_config.request_timeout_s={value!r}: must be a positive number")
            self.limits = {**self.limits, "request_timeout_s": value}
        admission = {name: self.limits[name] if config.get(name) is None else config[name]
                     for name in ("queue_delay_target_s", "queue_delay_interval_s", "max_inflight")}
        if errors := check_admission(*admission.values()):
            raise ValueError("user_config: " + "; ".join(errors))
        self.admission.configure(*admission.values())
        self.limits = {**self.limits, **admission}
        values = config.get("thresholds")
        if values is None:
            if self.file_thresholds is None:
                raise FileNotFoundError(f"no thresholds: {self.file_source} not found and user_config.thresholds "
                                        f"is null; run 'icpc calibrate' or set user_config.thresholds")
            self.thresholds, self.source = self.file_thresholds, self.file_source
            return
        if errors := check_thresholds(values, len(self.spec.ladder)):
            raise ValueError("user_config.thresholds: " + "; ".join(errors))
        self.thresholds, self.source = [float(t) for t in values], "user_config"

    # --------------------------------------------------------------- readiness

    async def ensure_probe(self) -> None:
        """Start the ping loop on this replica's event loop (once), and wait for its first answer."""
        if self.probe is None:
            self.probe = asyncio.get_running_loop().create_task(self.probe_model())
        while self.health.ready is None:
            await asyncio.sleep(0.01)

    async def probe_model(self) -> None:
        while True:
            response = self.classifier.ping.remote()
            try:
                self.health.up(await asyncio.wait_for(awaited(response), PROBE_TIMEOUT_S))
            except asyncio.TimeoutError:
                response.cancel()
                # a ping that waited behind requests the model is answering means busy, not down -- unless
                # Ray says no replica that answered is alive any more (killed: Serve routes to none meanwhile)
                if not (self.health.ready and self.health.busy() and await self.a_replica_lives()):
                    self.health.down(f"the model deployment did not answer a ping within {PROBE_TIMEOUT_S} s "
                                     f"(no replica running; Serve replaces a dead one)")
            except Exception as exc:  # noqa: BLE001 - any failure to answer means not ready; the reason says which
                self.health.down(f"the model deployment failed a ping: {type(exc).__name__}: {exc}")
            await asyncio.sleep(PROBE_PERIOD_S)

    async def a_replica_lives(self) -> bool:
        """Whether any model replica that answered a ping is still a live actor, as Ray's GCS says: a
        SIGKILLed replica is dead there at once, long before BUSY_GRACE_S runs out."""
        import ray

        def alive(name: str, namespace: str) -> bool:
            try:
                ray.get_actor(name, namespace=namespace)
                return True
            except ValueError:   # the name is released: the actor is dead
                return False

        loop = asyncio.get_running_loop()
        for name, namespace in list(self.health.replicas.items()):
            try:
                if await asyncio.wait_for(loop.run_in_executor(None, alive, name, namespace), PROBE_TIMEOUT_S):
                    return True
            except asyncio.TimeoutError:
                return True       # the GCS is slow to answer: no evidence of death, keep calling it busy
            del self.health.replicas[name]
        return False

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Readiness: 200 while the model deployment answers pings, 503 with the reason while it cannot."""
        await self.ensure_probe()
        if not self.health.ready:
            return error(503, f"not ready: {self.health.reason} (for {time.time() - self.health.since:.1f} s)")
        return JSONResponse({"status": "ok", "model": self.health.describe(), "inflight": self.admission.inflight,
                             "admission": dataclasses.asdict(self.admission.state())})

    @api.get("/livez")
    async def livez(self) -> dict[str, Any]:
        """Liveness: this ingress replica answers (the model may not; see /healthz)."""
        return {"status": "ok", "pid": os.getpid()}

    @api.get("/v1/info")
    async def info(self) -> dict[str, Any]:
        await self.ensure_probe()
        return {"modality": self.spec.modality, "classes": self.model["classes"],
                "ladder": [{"level": i, "name": lv.name, "params": lv.params, "tokens": lv.tokens}
                           for i, lv in enumerate(self.spec.ladder)],
                "thresholds": self.thresholds, "thresholds_source": self.source,
                "order": active_order(self.thresholds), "strategy": self.model["strategy"],
                "checkpoint": self.model["checkpoint"], "spec": self.model["spec"],
                "limits": self.limits, "admission": dataclasses.asdict(self.admission.state()),
                "model": self.health.describe(), "pid": os.getpid()}

    # --------------------------------------------------------------- the cascade

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        timeout = self.limits["request_timeout_s"]
        # Shed before anything else, the body unread: a refusal costs a comparison and a small JSON.
        if not self.admission.try_admit(time.monotonic()):
            return error(503, f"{self.admission.reason()}; retry after {RETRY_AFTER_S} s")
        queued = None   # this request's queueing delay (s), once measured
        try:
            await self.ensure_probe()
            if not self.health.ready:
                raise ModelUnavailable(self.health.reason)
            body = await read_body(request, self.limits["max_body_bytes"])
            payload = read_payload(body, request.headers.get("content-type"), self.spec.modality,
                                   self.limits["max_body_bytes"])
            answer = await asyncio.wait_for(self.run(payload, list(self.thresholds)), timeout)
            queued = answer["timing_ms"]["queue"] / 1000
        except RequestError as exc:
            return error(exc.status, exc.reason)
        except ModelUnavailable as exc:
            return error(503, f"the model cannot answer now: {exc}; retry after {RETRY_AFTER_S} s")
        except (asyncio.TimeoutError, TimeoutError):
            queued = timeout   # its wait is unknown but long: the detector must see it
            return error(504, f"the cascade took longer than request_timeout_s={timeout}")
        except Exception as exc:  # noqa: BLE001 - the documented JSON error, never a plain-text 500
            return error(500, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.admission.finish(time.monotonic(), queued)
        answer["latency_ms"] = 1000 * (time.perf_counter() - started)
        return JSONResponse(answer)

    async def run(self, payload: bytes, thresholds: list[float]) -> dict[str, Any]:
        """The cascade for one payload: decode once, then per level tried compress it, classify it, decide.

        ``timing_ms``: ``decode`` and ``compress`` (work in the decode threads), ``model`` (the model calls,
        transport and waits included), ``forward`` (the forward passes that computed it) and ``queue``: its
        sojourn in queues, i.e. its waits for a decode thread and in the model's batcher. Admission measures
        overload by ``queue`` alone: a wait that fewer admitted requests would shorten (CPU taken by other
        processes, or the transport of a handle call, would not be).
        """
        loop = asyncio.get_running_loop()
        timing = {"decode": 0.0, "compress": 0.0, "model": 0.0, "forward": 0.0, "queue": 0.0}
        tokens = []

        async def in_pool(fn, *args):
            submitted = time.perf_counter()
            out, started, seconds = await loop.run_in_executor(self.pool, timed, fn, *args)
            timing["queue"] += max(0.0, started - submitted)
            return out, seconds

        decoded, timing["decode"] = await in_pool(self.decode, payload)

        async def predict(level: int) -> np.ndarray:
            (tok, pos), seconds = await in_pool(self.compress, decoded, level)
            t2 = time.perf_counter()
            probs, forward_s, queued_s = await self.call_model(tok, pos, level)
            timing["compress"] += seconds
            timing["model"] += time.perf_counter() - t2
            timing["forward"] += forward_s
            timing["queue"] += queued_s
            tokens.append(len(tok))
            return probs

        d = await run_cascade_async(predict, active_order(thresholds), thresholds)
        return {"label": d.label, "label_name": self.model["classes"][d.label], "score": d.score,
                "level": d.level, "level_name": self.spec.ladder[d.level].name,
                "levels_tried": d.levels_tried, "tokens": int(sum(tokens)),
                "timing_ms": {k: round(1000 * v, 3) for k, v in timing.items()}}

    def decode(self, payload: bytes) -> Any:
        try:
            return self.modality.decode(payload, self.spec)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder says is the client's answer
            raise self.undecodable(exc) from None

    def compress(self, decoded: Any, level: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.modality.compress(decoded, self.spec, [level]).levels[0]
        except Exception as exc:  # noqa: BLE001 - e.g. a video whose later frames do not decode
            raise self.undecodable(exc) from None

    def undecodable(self, exc: Exception) -> RequestError:
        return RequestError(422, f"cannot decode the {self.spec.modality} input: {type(exc).__name__}: {exc}")

    async def call_model(self, tokens: np.ndarray, positions: np.ndarray,
                         level: int) -> tuple[np.ndarray, float, float]:
        """The Classifier's probabilities, forward seconds and queued seconds, or ModelUnavailable as soon as the model is known to be down."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        response = self.classifier.predict.remote(tokens, positions, level)
        call = asyncio.ensure_future(awaited(response))
        went_down = asyncio.ensure_future(self.health.went_down.wait())
        try:
            await asyncio.wait({call, went_down}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                raise ModelUnavailable(self.health.reason)
            result = call.result()
            self.health.answered()
            return result
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            self.health.down(f"a model replica died mid-request ({type(exc).__name__}); Serve is replacing it")
            raise ModelUnavailable(self.health.reason) from None
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise ModelUnavailable(str(exc)) from None
        finally:  # a timeout (asyncio.wait_for) or a model gone: stop waiting, and tell Serve to drop the call
            went_down.cancel()
            if not call.done():
                call.cancel()
                response.cancel()


# ----------------------------------------------------------------------------- builders


def model_info(checkpoint: str) -> dict[str, Any]:
    """What the ingress needs from a checkpoint (spec, classes, strategy), read with ``weights_only``.

    A file that is not an ICPC checkpoint is a ValueError naming it, raised here, before Serve runs.
    """
    from icpc.modelio import load_checkpoint
    from icpc.pipeline.modalities import get_modality

    try:
        state = load_checkpoint(checkpoint)
        info = {"checkpoint": str(checkpoint), "spec": state["spec"], "classes": list(state["classes"]),
                "strategy": state["config"].get("strategy", "consistent")}
        get_modality(Spec.from_json(info["spec"]).modality)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load's many ways to say "not a checkpoint"
        raise ValueError(f"checkpoint {checkpoint} cannot be served: {type(exc).__name__}: {exc}; pass a "
                         f"last.pt written by 'icpc train'") from None
    return info


def thresholds_path(cfg: "ServeConfig") -> str:
    return cfg.thresholds or storage.join(storage.parent(cfg.checkpoint), THRESHOLDS_FILE)


def preflight(cfg: "ServeConfig") -> dict[str, Any]:
    """Check what would make the app fail once deployed, before anything starts: the checkpoint reads, and
    thresholds exist (the file, or ``set_thresholds``) and fit its ladder. Returns ``model_info``."""
    model = model_info(cfg.checkpoint)
    levels = len(model["spec"]["ladder"])
    if cfg.set_thresholds:
        if errors := check_thresholds(cfg.set_thresholds, levels):
            raise ValueError("set_thresholds: " + "; ".join(errors))
    else:
        load_thresholds(thresholds_path(cfg), levels)  # FileNotFoundError / ValueError with the fix
    return model


def serve_config(args: dict[str, Any] | ServeConfig) -> ServeConfig:
    """A validated ServeConfig from ``build_app`` args (unknown keys are errors)."""
    from icpc.config import ConfigError, finalize

    if isinstance(args, ServeConfig):
        return finalize(args)
    known = {f.name for f in dataclasses.fields(ServeConfig)}
    if unknown := sorted(set(args) - known):
        raise ConfigError([f"unknown build_app arg(s) {unknown}; known: {sorted(known)}"])
    return finalize(ServeConfig(**dict(args)))


def build_app(args: dict[str, Any] | ServeConfig):
    """The Serve application (``import_path: icpc.inference.serve:build_app``); ``args`` are ServeConfig fields."""
    cfg = serve_config(args)
    model = model_info(cfg.checkpoint)
    path = thresholds_path(cfg)
    if cfg.set_thresholds and (errors := check_thresholds(cfg.set_thresholds, len(model["spec"]["ladder"]))):
        raise ValueError("set_thresholds: " + "; ".join(errors))
    # No calibration file is fine when user_config brings thresholds; reconfigure refuses otherwise.
    thresholds = load_thresholds(path, len(model["spec"]["ladder"])) if storage.exists(path) else None
    limits = {"max_body_bytes": cfg.max_body_bytes, "request_timeout_s": cfg.request_timeout_s,
              "max_inflight": cfg.max_inflight, "queue_delay_target_s": cfg.queue_delay_target_s,
              "queue_delay_interval_s": cfg.queue_delay_interval_s, "decode_threads": cfg.decode_threads}
    # Models with GPUs: the replica reserves them, so CUDA_VISIBLE_DEVICES shows it one and device=auto finds it.
    classifier = Classifier.options(
        **replicas(cfg.classifier_replicas, cfg.classifier_max_replicas, 2 * cfg.max_batch_size),
        ray_actor_options={"num_cpus": cfg.classifier_cpus, "num_gpus": cfg.classifier_gpus},
        user_config=classifier_user_config(cfg), logging_config={"enable_access_log": cfg.access_log},
    ).bind(cfg.checkpoint, cfg.threads, cfg.device, cfg.precision, cfg.max_concurrent_batches)
    return Cascade.options(
        **replicas(cfg.ingress_replicas, cfg.ingress_max_replicas, cfg.max_inflight / 2),
        ray_actor_options={"num_cpus": cfg.ingress_cpus}, max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests, backpressure_config={"retry_after_s": RETRY_AFTER_S},
        user_config=ingress_user_config(cfg), logging_config={"enable_access_log": cfg.access_log},
    ).bind(classifier, model, thresholds, path, limits)


def ingress_user_config(cfg: ServeConfig) -> dict[str, Any]:
    return {"thresholds": cfg.set_thresholds or None, "max_inflight": cfg.max_inflight,
            "queue_delay_target_s": cfg.queue_delay_target_s, "queue_delay_interval_s": cfg.queue_delay_interval_s,
            "request_timeout_s": cfg.request_timeout_s}


def classifier_user_config(cfg: ServeConfig) -> dict[str, Any]:
    return {"batching": cfg.batching, "max_batch_size": cfg.max_batch_size,
            "batch_wait_timeout_s": cfg.batch_wait_timeout_s}


def app_config(cfg: ServeConfig) -> dict[str, Any]:
    """The app as a declarative Serve config (what ``serve deploy`` sends): build_app args + user_configs.

    The runtime knobs (thresholds, batching) go into the deployments' ``user_config``, not into
    ``args``: a config whose args are unchanged keeps its code version, so Serve only calls
    ``reconfigure`` on the running replicas instead of replacing them.
    """
    args = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS + DRIVER_FIELDS}
    return {"name": cfg.app_name, "route_prefix": cfg.route_prefix, "import_path": "icpc.inference.serve:build_app",
            "args": args, "deployments": [{"name": "Cascade", "user_config": ingress_user_config(cfg)},
                                          {"name": "Classifier", "user_config": classifier_user_config(cfg)}]}


def deploy(cfg: ServeConfig, *more: ServeConfig) -> None:
    """Deploy (or update in place) the app, or several apps (each its own ``app_name`` and ``route_prefix``),
    on the running Serve, as ``serve deploy`` would; blocks until RUNNING. Apps not named are removed."""
    from ray.serve.context import _get_global_client  # what `serve run CONFIG` uses; no dashboard needed
    from ray.serve.schema import ServeDeploySchema

    cfgs = [serve_config(c) for c in (cfg, *more)]
    for c in cfgs:
        preflight(c)  # refused here, before anything is deployed
    if len({c.app_name for c in cfgs}) < len(cfgs) or len({c.route_prefix for c in cfgs}) < len(cfgs):
        raise ValueError(f"apps {[(c.app_name, c.route_prefix) for c in cfgs]}: each needs its own app_name and "
                         f"route_prefix")
    cfg = cfgs[0]
    schema = ServeDeploySchema(applications=[app_config(c) for c in cfgs],
                               http_options=http_options(cfg))
    client = _get_global_client()
    client.deploy_apps(schema, _blocking=False)
    wait_running(client, {c.app_name for c in cfgs})
    client.wait_for_proxies_serving(wait_for_applications_running=True)


def wait_running(client, names: set[str], timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Until every app in ``names`` is RUNNING; a failed deploy raises at once with Serve's message. Serve's own
    blocking deploy gives up after 60 s, which replica start-up alone passes on a loaded 2-core machine."""
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        status = {s.name: s.app_status for s in client.list_serve_statuses() if s.name in names}
        if len(status) == len(names) and all(s.status == ApplicationStatus.RUNNING for s in status.values()):
            return
        if failed := {n: s.message for n, s in status.items() if s.status == ApplicationStatus.DEPLOY_FAILED}:
            raise RuntimeError(f"Serve could not deploy {sorted(failed)}: {failed}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve apps {sorted(names)} not RUNNING after {timeout_s:g} s: "
                               f"{ {n: str(s.status) for n, s in status.items()} }")
        time.sleep(0.2)


def http_options(cfg: ServeConfig) -> dict[str, Any]:
    """Serve's proxy: behind the front on loopback once ``start_serve`` chose ``serve_port``, else on host:port."""
    behind = resolve(cfg.front) == "haproxy" and cfg.serve_port > 0
    return {"host": "127.0.0.1" if behind else cfg.host, "port": cfg.serve_port if behind else cfg.port,
            "request_timeout_s": cfg.request_timeout_s + PROXY_GRACE_S}


def patient_proxy_start() -> None:
    """Give Serve's HTTP proxy 60 s (not Serve's 5 s) to report ready, unless the user chose a value.

    Serve's controller kills a proxy that is not ready within RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S, and
    ``serve.start`` then fails with "the actor never ran - it was cancelled"; on a busy 2-core machine a
    proxy took longer than 5 s. Set before Ray starts: the controller inherits the environment.
    """
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_TIMEOUT_S))


def start_serve(cfg: ServeConfig, *more: ServeConfig) -> str:
    """Start Serve's HTTP proxy (Ray must be up), deploy the app(s) and, with ``front``, HAProxy on
    ``cfg.host:cfg.port`` in front of it; returns the URL clients use.

    With a front, ``cfg`` gets the chosen ``serve_port`` (so later ``deploy(cfg)`` calls keep Serve's HTTP
    options); ``stop_serve`` or the process's exit stops the front."""
    for c in (cfg, *more):
        preflight(serve_config(c))  # before the proxy starts
    cfg.front = resolve(cfg.front)   # decided once: later deploy(cfg) calls keep Serve's HTTP options
    front = cfg.front == "haproxy"
    if front and not cfg.serve_port:
        cfg.serve_port = free_port(avoid=cfg.port)
    for c in more:
        c.front, c.serve_port = cfg.front, cfg.serve_port
    serve.start(http_options=http_options(cfg))
    deploy(cfg, *more)
    if front:
        start_front(cfg.host, cfg.port, f"127.0.0.1:{cfg.serve_port}", cfg.front_max_inflight,
                    cfg.front_queue_budget_ms, cfg.request_timeout_s, RETRY_AFTER_S)
    return f"http://{cfg.host}:{cfg.port}"


def stop_serve() -> None:
    """Stop this process's fronts and Serve (Ray stays up)."""
    stop_fronts()
    serve.shutdown()


def run_server(cfg: ServeConfig) -> None:
    """``icpc serve``: checks, then embedded Ray (no dashboard), the app, the URL printed; blocks until Ctrl-C."""
    import signal

    import ray

    def stop(signum, frame):  # SIGTERM (docker stop, kill) shuts down like Ctrl-C, Ray processes included
        raise KeyboardInterrupt

    cfg = serve_config(cfg)
    model = preflight(cfg)  # a missing thresholds file or a bad checkpoint is refused before Ray starts
    patient_proxy_start()
    init_local_ray(num_cpus=cfg.num_cpus or None, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs its own (aborting) handler
    try:
        url = start_serve(cfg)
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"WARNING: serving on {cfg.host}: Serve's HTTP API has no authentication", flush=True)
        media = example_request(model)
        print(front_line(cfg), flush=True)
        print(f"serving {cfg.checkpoint} ({model['spec']['modality']}) at {url}\n"
              f"  curl {url}/healthz\n"
              f"  curl {url}/v1/predict {media}\n"
              f"Ctrl-C to stop", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_serve()
        ray.shutdown()


def front_line(cfg: ServeConfig) -> str:
    """What sheds overload, in one line for the user."""
    if resolve(cfg.front) == "haproxy":
        return (f"front: HAProxy on {cfg.host}:{cfg.port} lets {cfg.front_max_inflight} predict requests into Serve "
                f"at once and answers 503 to one that waited {cfg.front_queue_budget_ms} ms for a slot; Serve's "
                f"proxy behind it on 127.0.0.1:{cfg.serve_port}")
    why = f"haproxy is not on PATH ({INSTALL_HINT.split(' or ')[0]})" if cfg.front == "auto" else "front=none"
    return f"front: none ({why}): overload is shed by the ingress, behind Serve's proxy, at ~25 ms of CPU per 503"


def example_request(model: dict[str, Any]) -> str:
    """The curl arguments of one example request for the model's modality."""
    return {"image": "-H 'Content-Type: image/png' --data-binary @sample.png",
            "video": "-H 'Content-Type: video/mp4' --data-binary @clip.mp4",
            "audio": "-H 'Content-Type: audio/wav' --data-binary @clip.wav",
            "text": "-H 'Content-Type: application/json' -d '{\"text\": \"a small domestic cat\"}'",
            }.get(model["spec"]["modality"], "--data-binary @sample")
