"""The serving core without Serve: the level batcher, the async cascade, device selection, ``classify``."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from icpc.inference.cascade import run_cascade
from icpc.devices import autocast_dtype, resolve_device
from icpc.inference.batcher import LevelBatcher
from icpc.inference.cascade import run_cascade_async as cascade
from icpc.inference.serve import ServeConfig, replicas


class Model:
    """A stand-in forward pass that records its batches and takes ``seconds`` (on the event loop's clock)."""

    def __init__(self, seconds: float = 0.05, fail_level: int | None = None):
        self.seconds, self.fail_level, self.batches = seconds, fail_level, []

    async def run(self, level: int, items: list) -> list:
        self.batches.append((level, list(items)))
        await asyncio.sleep(self.seconds)
        if level == self.fail_level:
            raise RuntimeError("CUDA error: out of memory")
        return [(level, item) for item in items]


def test_under_load_a_batch_takes_everything_that_arrived_during_the_previous_one():
    model = Model(seconds=0.05)

    async def scenario():
        batcher = LevelBatcher(model.run, levels=2, max_batch_size=32, wait_s=0.001)
        first = asyncio.ensure_future(batcher.submit(0, "a"))
        await asyncio.sleep(0.01)                      # the model is now busy with ["a"]
        rest = [asyncio.ensure_future(batcher.submit(0, f"x{i}")) for i in range(10)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert first == (0, "a") and rest == [(0, f"x{i}") for i in range(10)]
    assert [len(items) for _, items in model.batches] == [1, 10]   # not ten batches of one


def test_batches_hold_one_level_respect_the_size_and_serve_the_oldest_level_first():
    model = Model(seconds=0.01)

    async def scenario():
        batcher = LevelBatcher(model.run, levels=3, max_batch_size=4, wait_s=0.0)
        blocker = asyncio.ensure_future(batcher.submit(1, "busy"))
        await asyncio.sleep(0.001)
        calls = [batcher.submit(2, "old")] + [batcher.submit(0, i) for i in range(6)] + [batcher.submit(2, "new")]
        got = await asyncio.gather(*calls)
        await blocker
        return got

    got = asyncio.run(scenario())
    assert got[0] == (2, "old") and got[-1] == (2, "new") and got[1:7] == [(0, i) for i in range(6)]
    levels = [level for level, _ in model.batches]
    assert levels == [1, 2, 0, 0]            # level 2's oldest request came first; level 0 in two batches
    assert [len(items) for _, items in model.batches] == [1, 2, 4, 2]


def test_a_lone_request_waits_at_most_wait_s_for_company():
    model = Model(seconds=0.0)

    async def scenario():
        batcher = LevelBatcher(model.run, levels=1, max_batch_size=8, wait_s=0.05)
        t0 = time.perf_counter()
        await batcher.submit(0, "alone")
        return time.perf_counter() - t0

    waited = asyncio.run(scenario())
    assert 0.04 <= waited < 0.5 and model.batches == [(0, ["alone"])]


def test_a_failed_forward_pass_fails_every_caller_of_its_batch_and_nothing_else():
    model = Model(seconds=0.01, fail_level=1)

    async def scenario():
        batcher = LevelBatcher(model.run, levels=2, max_batch_size=8, wait_s=0.02)
        calls = [batcher.submit(1, i) for i in range(3)] + [batcher.submit(0, "ok")]
        return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(scenario())
    assert all(isinstance(g, RuntimeError) and "out of memory" in str(g) for g in got[:3])
    assert got[3] == (0, "ok")


def test_a_cancelled_request_is_left_out_of_its_batch():
    model = Model(seconds=0.02)

    async def scenario():
        batcher = LevelBatcher(model.run, levels=1, max_batch_size=8, wait_s=0.0)
        busy = asyncio.ensure_future(batcher.submit(0, "busy"))
        await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(batcher.submit(0, "gone"))
        kept = asyncio.ensure_future(batcher.submit(0, "kept"))
        await asyncio.sleep(0)
        gone.cancel()
        return await busy, await kept

    assert asyncio.run(scenario()) == ((0, "busy"), (0, "kept"))
    assert model.batches[1] == (0, ["kept"])


def test_the_async_cascade_decides_as_run_cascade_and_computes_only_the_levels_tried():
    rng = np.random.default_rng(0)
    for _ in range(200):
        probs = rng.dirichlet(np.ones(4) * 0.5, size=5)                  # (levels, classes)
        thresholds = [0.0] + list(rng.choice([0.3, 0.6, 0.9, 1.01], size=4))
        order = [lv for lv in (4, 3, 2, 1, 0) if lv == 0 or thresholds[lv] <= 1]
        computed = []

        async def predict(level):
            computed.append(level)
            return probs[level]

        got = asyncio.run(cascade(predict, order, thresholds))
        want = run_cascade(lambda lv: probs[lv], order, thresholds)
        assert got == want and computed == want.levels_tried


def test_device_selection_and_precision():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="choose auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no GPU.*num_gpus"):
            resolve_device("cuda:0")
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cuda", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16 and autocast_dtype("cuda", "fp16") is torch.float16
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("cpu", "int8")


def test_serve_config_plumbs_gpus_and_refuses_cuda_without_one():
    assert any("classifier_gpus > 0" in e for e in ServeConfig(device="cuda").validate())
    assert ServeConfig(device="cuda", classifier_gpus=0.25).validate() == []
    assert any("max_inflight" in e for e in ServeConfig(max_inflight=64, max_ongoing_requests=64).validate())
    assert replicas(1, 0, 8) == {"num_replicas": 1}
    auto = replicas(1, 4, 8)
    assert auto["num_replicas"] == "auto" and auto["autoscaling_config"]["max_replicas"] == 4


def test_classify_is_the_models_forward_pass_with_the_strategys_positions(image_folder):
    """``classify`` on real compressed images equals the model's own forward pass, sample by sample."""
    import torch

    from icpc.config import ModelConfig
    from icpc.inference.predict import classify
    from icpc.pipeline.modalities.image import MODALITY, ImageConfig, build_spec
    from icpc.training.model import TokenClassifier

    spec = build_spec(ImageConfig())
    torch.manual_seed(0)
    model = TokenClassifier(spec, ModelConfig(dim=32, depth=1, heads=2), 10, "renumber").eval()
    paths = sorted((image_folder / "test").glob("*/*.png"))[:5]
    items = [MODALITY.compress_bytes(p.read_bytes(), spec, [3]).levels[0] for p in paths]
    got = classify(model, spec, 3, items)
    for (tokens, _), probs in zip(items, got):
        with torch.no_grad():   # renumber: positions 0..n-1 whatever was stored
            logits = model(torch.from_numpy(tokens[None]), torch.arange(len(tokens))[None], 3)
        np.testing.assert_allclose(probs, torch.softmax(logits, 1)[0].numpy(), rtol=1e-5, atol=1e-6)
        assert probs.dtype == np.float32 and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_model_health_releases_waiters_when_the_model_goes_down_and_rearms_when_it_is_back():
    from icpc.inference.serve import ModelHealth, error

    async def scenario():
        health = ModelHealth()
        assert health.ready is None and not health.describe()["ready"]
        health.up({"pid": 1})
        waiter = asyncio.ensure_future(health.went_down.wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        health.down("no answer to a ping within 1.0 s")
        await asyncio.sleep(0)
        assert waiter.done() and health.ready is False and "ping" in health.describe()["reason"]
        health.up({"pid": 2})                      # the replacement answers: a fresh event, not set
        assert health.ready and not health.went_down.is_set() and health.describe()["pid"] == 2

    asyncio.run(scenario())
    r = error(503, "the model cannot answer now")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert json.loads(r.body) == {"error": "the model cannot answer now", "status": 503}
    assert "retry-after" not in error(404, "Not Found").headers
