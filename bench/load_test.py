"""Load test of the Serve cascade: N concurrent HTTP clients on loopback, batching on vs off in one run.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/load_test.py --checkpoint runs/icpc/last.pt \
        --clients 32 --seconds 20 --rounds 2 --output bench/results/load_test.json

Starts the app on an embedded Ray (127.0.0.1), sends real test-split samples (the raw files the
dataset's index names) as raw uploads, and alternates phases with batching on and off (ABBA...,
switched through the Classifier's user_config, no redeploy) so both see the same machine load.
Reports throughput, p50/p99 latency (client side), errors, mean batch size and answering levels.
The clients run on the same cores as the server: on a 2-core machine they take a share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import mimetypes
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def load_samples(data: str, split: str, limit: int) -> list[tuple[bytes, str, int]]:
    """(bytes, content type, label) of up to ``limit`` raw inputs of ``split``, from the dataset's index."""
    import pyarrow.parquet as pq

    rows = pq.read_table(Path(data) / "index.parquet", columns=["split", "source", "label"]).to_pylist()
    rows = [r for r in rows if r["split"] == split][:limit]
    sources = [r["source"] for r in rows]
    if not sources:
        raise SystemExit(f"{data}/index.parquet has no {split!r} samples")
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} raw inputs of {split} are not readable here (e.g. {missing[0]}); "
                         f"the load test sends the raw files the index names")
    return [(Path(r["source"]).read_bytes(), mimetypes.guess_type(r["source"])[0] or "application/octet-stream",
             r["label"]) for r in rows]


async def run_phase(url: str, samples: list[tuple[bytes, str, int]], clients: int, seconds: float,
                    counter: Iterator[int]) -> list[dict]:
    """``clients`` workers post samples back to back for ``seconds``; one record per request.

    ``counter`` is shared by all workers and phases, so the samples are sent in turn, run-wide.
    """
    import httpx

    records: list[dict] = []
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while time.perf_counter() < end:
                sample = next(counter) % len(samples)
                data, ctype, label = samples[sample]
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", content=data, headers={"Content-Type": ctype})
                    body = r.json() if r.status_code == 200 else {}
                    records.append({"ms": 1000 * (time.perf_counter() - t0), "status": r.status_code,
                                    "level": body.get("level"), "server_ms": body.get("latency_ms"),
                                    "sample": sample, "correct": body.get("label") == label,
                                    "tried": len(body.get("levels_tried", []))})
                except httpx.HTTPError as exc:
                    records.append({"ms": 1000 * (time.perf_counter() - t0), "status": type(exc).__name__,
                                    "level": None, "server_ms": None, "sample": sample, "correct": False, "tried": 0})

        await asyncio.gather(*(worker() for _ in range(clients)))
    return records


def summarize(records: list[dict], seconds: float, batches: int, items: int) -> dict:
    ok = [r for r in records if r["status"] == 200]
    ms = np.array([r["ms"] for r in ok]) if ok else np.array([np.nan])
    levels = [r["level"] for r in ok]
    return {"requests": len(records), "errors": len(records) - len(ok), "seconds": seconds,
            "throughput_rps": len(ok) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "server_mean_ms": float(np.mean([r["server_ms"] for r in ok])) if ok else float("nan"),
            "forward_passes": batches, "mean_batch": items / batches if batches else float("nan"),
            "mean_levels_tried": float(np.mean([r["tried"] for r in ok])) if ok else float("nan"),
            "correct_by_sample": {r["sample"]: r["correct"] for r in ok},
            "answered": {str(lv): levels.count(lv) / len(levels) for lv in sorted(set(levels))}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint to serve (thresholds.json beside it)")
    p.add_argument("--thresholds", default="", help="calibration file (default CHECKPOINT_DIR/thresholds.json)")
    p.add_argument("--set-thresholds", default="",
                   help="comma-separated per-level thresholds instead of the file (e.g. 0,2,2,2,2 = level 0 only)")
    p.add_argument("--data", default="", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", default="test", help="split whose raw inputs are sent")
    p.add_argument("--samples", type=int, default=500, help="distinct inputs, cycled")
    p.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    p.add_argument("--seconds", type=float, default=15, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds of load before each phase")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (batched, unbatched), order alternating")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the embedded Ray")
    p.add_argument("--output", default="", help="write the results as JSON here")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from icpc.inference.serve import APP_NAME, ServeConfig, deploy, model_info, start_serve
    from icpc.modelio import load_checkpoint

    data = args.data or load_checkpoint(args.checkpoint)["data"]
    samples = load_samples(data, args.split, args.samples)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(checkpoint=args.checkpoint, thresholds=args.thresholds, port=port,
                      set_thresholds=[float(t) for t in args.set_thresholds.split(",") if t])
    load_before = os.getloadavg()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict]] = {"batched": [], "unbatched": []}
    counter = itertools.count()
    latencies: dict[str, list[float]] = {"batched": [], "unbatched": []}
    try:
        url = start_serve(cfg)
        classifier = serve.get_deployment_handle("Classifier", APP_NAME)
        for rnd in range(args.rounds):
            for mode in (("batched", "unbatched") if rnd % 2 == 0 else ("unbatched", "batched")):
                deploy(ServeConfig(**{**cfg.__dict__, "batching": mode == "batched"}))  # reconfigure only
                asyncio.run(run_phase(url, samples, args.clients, args.warmup, counter))
                before = classifier.stats.remote().result()
                t0 = time.perf_counter()
                records = asyncio.run(run_phase(url, samples, args.clients, args.seconds, counter))
                elapsed = time.perf_counter() - t0
                after = classifier.stats.remote().result()
                assert after["batching"] == (mode == "batched") and after["pid"] == before["pid"]
                phase = summarize(records, elapsed, after["batches"] - before["batches"],
                                  after["items"] - before["items"])
                results[mode].append(phase)
                latencies[mode] += [r["ms"] for r in records if r["status"] == 200]
                print(f"round {rnd + 1} {mode:<9} {phase['throughput_rps']:7.1f} req/s  p50 {phase['p50_ms']:7.1f} ms  "
                      f"p99 {phase['p99_ms']:7.1f} ms  errors {phase['errors']}  mean batch {phase['mean_batch']:.1f}",
                      flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {"command": " ".join([sys.executable, *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
              "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "clients": args.clients, "samples": len(samples), "split": args.split,
              "model": {k: v for k, v in model_info(args.checkpoint).items() if k != "spec"},
              "serve": cfg.__dict__, "phases": results,
              "total": {mode: summarize_phases(ph, latencies[mode]) for mode, ph in results.items()}}
    answers: dict[int, bool] = {}
    for phases in results.values():
        for ph in phases:
            answers.update(ph.pop("correct_by_sample"))
    report["served_accuracy"] = {"samples": len(answers), "accuracy": sum(answers.values()) / max(1, len(answers))}
    print(f"served accuracy over {len(answers)} distinct {args.split} samples: {report['served_accuracy']['accuracy']:.4f}")
    for mode, t in report["total"].items():
        print(f"{mode:<9} {t['throughput_rps']:7.1f} req/s  p50 {t['p50_ms']:7.1f} ms  p99 {t['p99_ms']:7.1f} ms  "
              f"errors {t['errors']}/{t['requests']}  mean batch {t['mean_batch']:.1f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")
    return 0 if all(t["errors"] == 0 for t in report["total"].values()) else 1


def summarize_phases(phases: list[dict], ok_ms: list[float]) -> dict:
    """Totals over the phases of one mode; percentiles over every successful request of the mode."""
    seconds = sum(p["seconds"] for p in phases)
    ok = sum(p["requests"] - p["errors"] for p in phases)
    batches = sum(p["forward_passes"] for p in phases)
    return {"requests": sum(p["requests"] for p in phases), "errors": sum(p["errors"] for p in phases),
            "seconds": seconds, "throughput_rps": ok / seconds,
            "p50_ms": float(np.percentile(ok_ms, 50)) if ok_ms else float("nan"),
            "p99_ms": float(np.percentile(ok_ms, 99)) if ok_ms else float("nan"),
            "mean_batch": sum(p["mean_batch"] * p["forward_passes"] for p in phases) / batches if batches else 0.0,
            "mean_levels_tried": float(np.average([p["mean_levels_tried"] for p in phases],
                                                  weights=[p["requests"] - p["errors"] for p in phases]))}


if __name__ == "__main__":
    sys.exit(main())
