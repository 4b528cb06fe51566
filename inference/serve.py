"""The ICPC cascade as a Ray Serve app: an HTTP ingress (``Cascade``) and a batching model (``Classifier``).

    icpc serve --checkpoint runs/icpc/last.pt            # embedded Ray, http://127.0.0.1:8000
    serve deploy cluster/serve-config.yaml               # inference.serve:build_app on a cluster
    curl -s http://127.0.0.1:8000/v1/predict -H 'Content-Type: image/png' --data-binary @shoe.png

The ingress compresses each request with the modality's own compressor (the pipeline's code), one
level at a time, and runs ``inference.cascade.run_cascade`` over the Classifier's answers; the
Classifier batches concurrent requests (``@serve.batch``) and runs one forward pass per level.
Thresholds come from ``icpc calibrate``'s file and change at runtime through ``user_config``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures' types at runtime.
import asyncio
import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from icpc import storage
from icpc.contract import Spec
from icpc.inference.calibrate import THRESHOLDS_FILE, active_order, check_thresholds, load_thresholds
from icpc.inference.cascade import run_cascade
from icpc.inference.http_input import RequestError, check_declared_length, read_payload

APP_NAME = "icpc"
# ServeConfig fields that reach the running replicas through user_config (no restart).
RUNTIME_FIELDS = ("set_thresholds", "batching", "max_batch_size", "batch_wait_timeout_s")


@dataclass
class ServeConfig:
    """``icpc serve`` / ``build_app`` args: the model, its thresholds, the HTTP limits and the batching."""

    checkpoint: str = "runs/train/last.pt"   # from `icpc train`
    thresholds: str = ""                   # calibration file; "" = thresholds.json beside the checkpoint
    set_thresholds: list[float] = field(default_factory=list)  # runtime override via user_config; [] = the file
    host: str = "127.0.0.1"                # HTTP proxy address; anything else exposes an unauthenticated API
    port: int = 8000
    batching: bool = True                  # @serve.batch across requests, per level (off: one forward per request)
    max_batch_size: int = 32               # requests per forward pass
    batch_wait_timeout_s: float = 0.005    # how long a batch waits to fill (s)
    classifier_replicas: int = 1           # model replicas
    classifier_cpus: float = 0.5           # Ray CPUs per model replica (fractional: the app fits 2 cores)
    ingress_cpus: float = 0.25             # Ray CPUs of the HTTP ingress replica
    threads: int = 1                       # torch intra-op threads per model replica
    max_body_bytes: int = 8_000_000        # larger bodies (and decoded payloads) get 413
    request_timeout_s: float = 30.0        # a request still running after this gets 504
    max_ongoing_requests: int = 64         # concurrent requests per ingress replica (and its thread pool)
    num_cpus: int = 0                      # CPUs of the embedded Ray of `icpc serve` (0 = all)

    def validate(self) -> list[str]:
        errors = []
        for name in ("port", "max_batch_size", "classifier_replicas", "threads", "max_body_bytes",
                     "max_ongoing_requests"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)}: must be positive")
        for name in ("classifier_cpus", "ingress_cpus", "batch_wait_timeout_s"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)}: must be >= 0")
        if self.request_timeout_s <= 0:
            errors.append(f"request_timeout_s={self.request_timeout_s}: must be positive")
        return errors


def classify(model, spec: Spec, items: list[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
    """Softmax probabilities ``(C,)`` for each ``(tokens, positions, level)``: one forward pass per level.

    Positions are the stored (consistent) ones, mapped to the model's strategy as in evaluation;
    a text level of mixed lengths is padded with a padding mask (training's ``collate``).
    """
    import torch

    from icpc.contract import positions_for
    from icpc.batching import collate

    out: list[np.ndarray | None] = [None] * len(items)
    for level in sorted({lv for _, _, lv in items}):
        idx = [i for i, (_, _, lv) in enumerate(items) if lv == level]
        grid = spec.ladder[level].grid
        batch = collate([{"tokens": items[i][0], "label": 0, "level": level, "key": "",
                          "positions": positions_for(model.strategy, spec.reference_grid, grid, items[i][1])}
                         for i in idx])
        with torch.inference_mode():
            logits = model(batch["tokens"], batch["positions"], level, batch["padding_mask"])
            probs = torch.softmax(logits.float(), 1).numpy()
        for j, i in enumerate(idx):
            out[i] = probs[j]
    return out


@serve.deployment(name="Classifier", ray_actor_options={"num_cpus": 0.5})
class Classifier:
    """Holds the checkpoint (``weights_only=True``); batches requests across callers, per level."""

    def __init__(self, checkpoint: str, threads: int = 1):
        import torch

        from icpc.modelio import load_model

        torch.set_num_threads(threads)
        self.model, self.spec, _ = load_model(checkpoint)
        self.batching, self.batches, self.items = True, 0, 0

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``{"batching": bool, "max_batch_size": int, "batch_wait_timeout_s": s}``."""
        self.batching = bool(config.get("batching", True))
        self.predict_batch.set_max_batch_size(int(config.get("max_batch_size", 32)))
        self.predict_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.005)))

    async def predict(self, tokens: np.ndarray, positions: np.ndarray, level: int) -> np.ndarray:
        if self.batching:
            return await self.predict_batch((tokens, positions, level))
        return self.forward([(tokens, positions, level)])[0]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        return self.forward(items)

    def forward(self, items: list[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        self.batches, self.items = self.batches + 1, self.items + len(items)
        return classify(self.model, self.spec, items)

    def stats(self) -> dict[str, Any]:
        """Forward passes and requests served so far (mean batch size = items / batches)."""
        return {"pid": os.getpid(), "batching": self.batching, "batches": self.batches, "items": self.items}


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


def error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason, "status": status}, status_code=status)


api = FastAPI(title="ICPC cascade", description="Variable-effort classification of compressed inputs")


@serve.deployment(name="Cascade", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Cascade:
    """HTTP ingress: size-checks and parses the request, then compresses and classifies level by level."""

    def __init__(self, classifier, model: dict[str, Any], thresholds: list[float] | None, source: str,
                 limits: dict[str, Any]):
        from icpc.pipeline.modalities import get_modality

        self.classifier, self.model, self.limits = classifier, model, limits
        self.spec = Spec.from_json(model["spec"])
        self.modality = get_modality(self.spec.modality)
        self.file_thresholds, self.file_source = thresholds, source
        self.thresholds, self.source = thresholds, source
        self.pool = ThreadPoolExecutor(limits["max_ongoing_requests"], thread_name_prefix="cascade")

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``{"thresholds": [per level]}``; null or absent = the calibration file."""
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

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/info")
    async def info(self) -> dict[str, Any]:
        return {"modality": self.spec.modality, "classes": self.model["classes"],
                "ladder": [{"level": i, "name": lv.name, "params": lv.params, "tokens": lv.tokens}
                           for i, lv in enumerate(self.spec.ladder)],
                "thresholds": self.thresholds, "thresholds_source": self.source,
                "order": active_order(self.thresholds), "strategy": self.model["strategy"],
                "checkpoint": self.model["checkpoint"], "spec": self.model["spec"],
                "limits": self.limits, "pid": os.getpid()}

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        timeout = self.limits["request_timeout_s"]
        try:
            body = await read_body(request, self.limits["max_body_bytes"])
            payload = read_payload(body, request.headers.get("content-type"), self.spec.modality,
                                   self.limits["max_body_bytes"])
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self.pool, self.run, payload, list(self.thresholds), started + timeout)
            answer = await asyncio.wait_for(work, timeout)
        except RequestError as exc:
            return error(exc.status, exc.reason)
        except (asyncio.TimeoutError, TimeoutError):
            return error(504, f"the cascade took longer than request_timeout_s={timeout}")
        answer["latency_ms"] = 1000 * (time.perf_counter() - started)
        return JSONResponse(answer)

    def run(self, payload: bytes, thresholds: list[float], deadline: float) -> dict[str, Any]:
        """The cascade for one payload (in a pool thread): decode once, then compress a level, classify it,
        decide, repeat."""
        tokens = []
        try:
            decoded = self.modality.decode(payload, self.spec)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder says is the client's answer
            raise RequestError(422, f"cannot decode the {self.spec.modality} input: {type(exc).__name__}: {exc}") from None

        def predict(level: int) -> np.ndarray:
            try:
                tok, pos = self.modality.compress(decoded, self.spec, [level]).levels[0]
            except Exception as exc:  # noqa: BLE001 - whatever the decoder says is the client's answer
                raise RequestError(422, f"cannot decode the {self.spec.modality} input: "
                                        f"{type(exc).__name__}: {exc}") from None
            tokens.append(len(tok))
            remaining = max(0.001, deadline - time.perf_counter())
            return self.classifier.predict.remote(tok, pos, level).result(timeout_s=remaining)

        d = run_cascade(predict, active_order(thresholds), thresholds)
        return {"label": d.label, "label_name": self.model["classes"][d.label], "score": d.score,
                "level": d.level, "level_name": self.spec.ladder[d.level].name,
                "levels_tried": d.levels_tried, "tokens": int(sum(tokens))}


def model_info(checkpoint: str) -> dict[str, Any]:
    """What the ingress needs from a checkpoint (spec, classes, strategy), read with ``weights_only``."""
    from icpc.modelio import load_checkpoint

    state = load_checkpoint(checkpoint)
    return {"checkpoint": str(checkpoint), "spec": state["spec"], "classes": list(state["classes"]),
            "strategy": state["config"].get("strategy", "consistent")}


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
    path = cfg.thresholds or storage.join(storage.parent(cfg.checkpoint), THRESHOLDS_FILE)
    if cfg.set_thresholds and (errors := check_thresholds(cfg.set_thresholds, len(model["spec"]["ladder"]))):
        raise ValueError("set_thresholds: " + "; ".join(errors))
    # No calibration file is fine when user_config brings thresholds; reconfigure refuses otherwise.
    thresholds = load_thresholds(path, len(model["spec"]["ladder"])) if storage.exists(path) else None
    limits = {"max_body_bytes": cfg.max_body_bytes, "request_timeout_s": cfg.request_timeout_s,
              "max_ongoing_requests": cfg.max_ongoing_requests}
    classifier = Classifier.options(
        num_replicas=cfg.classifier_replicas, ray_actor_options={"num_cpus": cfg.classifier_cpus},
        max_ongoing_requests=cfg.max_ongoing_requests,
        user_config={"batching": cfg.batching, "max_batch_size": cfg.max_batch_size,
                     "batch_wait_timeout_s": cfg.batch_wait_timeout_s},
    ).bind(cfg.checkpoint, cfg.threads)
    return Cascade.options(
        ray_actor_options={"num_cpus": cfg.ingress_cpus}, max_ongoing_requests=cfg.max_ongoing_requests,
        user_config={"thresholds": cfg.set_thresholds or None},
    ).bind(classifier, model, thresholds, path, limits)


def app_config(cfg: ServeConfig) -> dict[str, Any]:
    """The app as a declarative Serve config (what ``serve deploy`` sends): build_app args + user_configs.

    The runtime knobs (thresholds, batching) go into the deployments' ``user_config``, not into
    ``args``: a config whose args are unchanged keeps its code version, so Serve only calls
    ``reconfigure`` on the running replicas instead of replacing them.
    """
    args = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    return {"name": APP_NAME, "route_prefix": "/", "import_path": "icpc.inference.serve:build_app", "args": args,
            "deployments": [
                {"name": "Cascade", "user_config": {"thresholds": cfg.set_thresholds or None}},
                {"name": "Classifier", "user_config": {"batching": cfg.batching, "max_batch_size": cfg.max_batch_size,
                                                       "batch_wait_timeout_s": cfg.batch_wait_timeout_s}}]}


def deploy(cfg: ServeConfig) -> None:
    """Deploy (or update in place) the app on the running Serve, as ``serve deploy`` would; blocks until RUNNING."""
    from ray.serve.context import _get_global_client  # what `serve run CONFIG` uses; no dashboard needed
    from ray.serve.schema import ServeDeploySchema

    cfg = serve_config(cfg)
    path = cfg.thresholds or storage.join(storage.parent(cfg.checkpoint), THRESHOLDS_FILE)
    if not cfg.set_thresholds and not storage.exists(path):
        load_thresholds(path, 0)  # raises FileNotFoundError with the fix, before anything is deployed
    if cfg.set_thresholds:
        levels = len(model_info(cfg.checkpoint)["spec"]["ladder"])
        if errors := check_thresholds(cfg.set_thresholds, levels):
            raise ValueError("set_thresholds: " + "; ".join(errors))
    schema = ServeDeploySchema(applications=[app_config(cfg)],
                               http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})
    _get_global_client().deploy_apps(schema, _blocking=True)


def start_serve(cfg: ServeConfig) -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` (Ray must be up) and deploy; returns the URL."""
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})
    deploy(cfg)
    return f"http://{cfg.host}:{cfg.port}"


def run_server(cfg: ServeConfig) -> None:
    """``icpc serve``: embedded Ray (no dashboard), the app, the URL printed; blocks until Ctrl-C."""
    import signal
    import threading

    import ray

    def stop(signum, frame):  # SIGTERM (docker stop, kill) shuts down like Ctrl-C, Ray processes included
        raise KeyboardInterrupt

    cfg = serve_config(cfg)
    ray.init(address="local", num_cpus=cfg.num_cpus or None, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs its own (aborting) handler
    try:
        url = start_serve(cfg)
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"WARNING: serving on {cfg.host}: Serve's HTTP API has no authentication", flush=True)
        print(f"serving {cfg.checkpoint} at {url}\n"
              f"  curl {url}/v1/info\n"
              f"  curl {url}/v1/predict -H 'Content-Type: image/png' --data-binary @sample.png\n"
              f"Ctrl-C to stop", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
