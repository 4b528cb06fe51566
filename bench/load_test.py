"""Load test of the Serve cascade: concurrent HTTP clients on loopback, several arms in one run, interleaved.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/load_test.py --checkpoint runs/icpc/last.pt \
        --arms cascade,unbatched,level0 --clients 32,128 --seconds 12 --rounds 2 --kill \
        --output bench/results/serve/load_test.json

Starts the app on an embedded Ray (127.0.0.1) and sends real samples of the split (the raw inputs
the dataset's index names) as raw uploads. An arm is a runtime setting of the same deployment,
switched through user_config (no redeploy, checked by the replicas' pids): ``cascade`` (the
calibrated thresholds, batching on), ``unbatched`` (the same, one forward pass per request),
``level0`` (level 0 only, batching on), ``level0-unbatched``. Every round runs every (clients, arm)
phase, in an order that alternates round by round (ABBA), so the arms see the same machine load.

Per phase: requests/s, client p50/p99, statuses (503 and 504 apart), mean batch, levels tried,
where the server's time went (decode, compression, waiting on the model) and the CPU seconds
each process (client, HTTP proxy, ingress, model) used per request. A client that gets a 503
waits its Retry-After before the next request, as a well-behaved client does. With ``--kill``, a
last phase kills the model replica (SIGKILL of the pid it reports) mid-run and records how long
requests waited, what they got and what ``/healthz`` said until Serve's replacement answered.
The clients run on the same cores as the server: on a 2-core machine they take a share of it,
reported as the client's CPU ms per request (``--client-cpus`` pins them). ``--client wrk`` drives the
load with ``wrk`` (Debian package; ``bench/wrk_post.lua``: one connection per wrk thread, per-request
latency and status, Retry-After honoured), which costs the server's cores far less than aiohttp.

Overload (issue 26): ``--saturation 2,4,8,16,32`` first finds the smallest client count whose
throughput is within 10% of the best (1x, on the first arm), then measures 1x and 4x for every arm;
``fixed-count`` is main's admission before (48 at once), ``queue-delay`` the queueing-delay budget:

    RAY_AUTH_MODE=disabled .venv/bin/python bench/load_test.py --checkpoint runs/icpc/last.pt \
        --arms fixed-count,queue-delay --saturation 2,4,8,16,32 --seconds 10 --rounds 3 \
        --output bench/results/serve/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ARMS = {  # name -> ServeConfig changes from the run's config (runtime fields only: applied by reconfigure)
    "cascade": {},
    "unbatched": {"batching": False},
    "level0": {"level0": True},
    "level0-unbatched": {"batching": False, "level0": True},
    # admission (issue 26): main's fixed count of 48 before, the queueing-delay budget after
    "fixed-count": {"queue_delay_target_s": 0.0, "max_inflight": 48, "via": "serve"},
    "queue-delay": {"via": "serve"},
    # the HAProxy front (front.py) on the app's port, Serve's proxy behind it; every other arm sends to Serve's
    # proxy directly (behind the front when the run has one, so both kinds of arm run on one deployment)
    "front": {"via": "front"},
}
TIMING = ("decode", "compress", "model", "forward", "queue")   # the server's timing_ms of a request
PROCESS_TITLES = {"proxy": "ray::ProxyActor", "ingress": "ServeReplica:icpc:Cascade",
                  "model": "ServeReplica:icpc:Classifier", "front": "haproxy -db -f"}


# ----------------------------------------------------------------------------- clients


async def run_phase(url: str, samples: list[dict], clients: int, seconds: float, counter: Iterator[int],
                    retry_after: bool = True) -> list[dict]:
    """``clients`` workers post samples back to back for ``seconds``; one record per request.

    ``counter`` is shared by all workers and phases, so the samples are sent in turn, run-wide.
    """
    import aiohttp

    records: list[dict] = []
    start = time.perf_counter()
    end = start + seconds
    # aiohttp (a Ray Serve dependency), not httpx: on 2 shared cores the client's own CPU is taken from the
    # server, and one httpx pool shared by 128 workers spent ~30 ms of CPU per request on its bookkeeping.
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:

        async def worker() -> None:
            while time.perf_counter() < end:
                sample = next(counter) % len(samples)
                s = samples[sample]
                t0 = time.perf_counter()
                rec = {"t0": t0 - start, "sample": sample, "level": None, "tried": 0, "correct": False,
                       "timing": None, "json": True}
                status, retry = None, 1.0
                try:
                    async with client.post("/v1/predict", data=s["data"],
                                           headers={"Content-Type": s["content_type"]}) as r:
                        status, text = r.status, await r.text()
                        retry = float(r.headers.get("Retry-After", 1))
                        rec["front"] = r.headers.get("X-ICPC-Shed") == "front"
                    rec["status"] = status
                    try:
                        body = json.loads(text)
                    except ValueError:
                        body, rec["json"] = {}, False
                    if status == 200:
                        rec.update(level=body["level"], tried=len(body["levels_tried"]), server_ms=body["latency_ms"],
                                   correct=body["label"] == s["label"], timing=body.get("timing_ms"))
                    else:
                        rec["error"] = (body.get("error") if isinstance(body, dict) else None) or text[:200]
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    rec.update(status=type(exc).__name__, error=str(exc)[:200], json=False)
                rec["ms"] = 1000 * (time.perf_counter() - t0)
                records.append(rec)
                if retry_after and status == 503:
                    await asyncio.sleep(min(5.0, retry))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return records


WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")


def run_phase_wrk(url: str, samples: list[dict], clients: int, seconds: float, workdir: Path,
                  retry_after: bool = True) -> list[dict]:
    """The same phase driven by ``wrk`` (C, one connection per wrk thread, ``wrk_post.lua``): a client that
    takes microseconds of CPU per request, where aiohttp takes about a millisecond from the server's cores.
    One record per response, as ``run_phase`` makes them (no server timing breakdown)."""
    import subprocess
    import uuid

    types = {s["content_type"] for s in samples}
    if len(types) != 1:
        raise SystemExit(f"--client wrk sends one Content-Type; the samples have {sorted(types)}")
    bodies = workdir / "bodies"
    if not bodies.exists():
        bodies.mkdir(parents=True)
        for i, s in enumerate(samples):
            (bodies / str(i)).write_bytes(s["data"])
    out = workdir / f"phase-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    cmd = ["wrk", "-t", str(clients), "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "60s",
           "-s", str(WRK_SCRIPT), f"{url}/v1/predict", "--", str(bodies), str(len(samples)), types.pop(), str(out),
           "1" if retry_after else "0"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    records = []
    for part in workdir.glob(out.name + ".*"):
        for line in part.read_text().splitlines():
            status, started, elapsed, is_json, level, label, tried, server_ms, sample, front = line.split()
            s = int(sample)
            records.append({"t0": float(started) / 1e6 - start, "sample": s, "status": int(status), "front": front == "1",
                            "ms": float(elapsed) / 1000, "json": is_json == "1", "level": int(level),
                            "tried": int(tried), "correct": int(status) == 200 and int(label) == samples[s]["label"],
                            "timing": None, "server_ms": float(server_ms)})
        part.unlink()
    return records


async def watch_health(url: str, seconds: float, period: float = 0.1) -> list[dict]:
    """``/healthz`` every ``period`` s for ``seconds``: (t, status, ms)."""
    import aiohttp

    out, start = [], time.perf_counter()
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=10)) as client:
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            try:
                async with client.get("/healthz") as r:
                    status = r.status
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            out.append({"t": t0 - start, "status": status, "ms": 1000 * (time.perf_counter() - t0)})
            await asyncio.sleep(period)
    return out


# ----------------------------------------------------------------------------- measurements


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each Serve process kind and by this client process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {kind: 0.0 for kind in PROCESS_TITLES}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for kind, needle in PROCESS_TITLES.items():
            if needle in title:
                out[kind] += (int(fields[11]) + int(fields[12])) / tick
    t = os.times()
    out["client"] = t.user + t.system + t.children_user + t.children_system   # children: wrk, once it ended
    return out


def summarize(records: list[dict], seconds: float, stats: dict[str, Any], cpu: dict[str, float]) -> dict:
    """One phase's figures; ``stats`` and ``cpu`` are differences over the phase."""
    ok = [r for r in records if r["status"] == 200]
    ms = np.array([r["ms"] for r in ok]) if ok else np.array([np.nan])
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    rejected = [r["ms"] for r in records if r["status"] == 503]
    json_503 = [r for r in records if r["status"] == 503 and r["json"]]
    timed = [r["timing"] for r in ok if r["timing"]]   # none with wrk: it keeps no response bodies
    timing = {k: float(np.mean([t.get(k, np.nan) for t in timed])) if timed else float("nan") for k in TIMING}
    levels = [r["level"] for r in ok]
    return {
        "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok), "statuses": statuses,
        "server_errors": sum(n for s, n in statuses.items() if s != "200" and not s.startswith("4")),
        "status_503": statuses.get("503", 0), "status_504": statuses.get("504", 0),
        "non_json_errors": sum(1 for r in records if r["status"] != 200 and not r["json"]),
        "seconds": seconds, "throughput_rps": len(ok) / seconds,
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "rejected_p50_ms": float(np.percentile(rejected, 50)) if rejected else None,
        "rejected_p99_ms": float(np.percentile(rejected, 99)) if rejected else None,
        "rejected_max_ms": float(np.max(rejected)) if rejected else None,
        "status_503_json": len(json_503),
        "status_503_front": sum(1 for r in records if r["status"] == 503 and r.get("front")),   # x-icpc-shed
        "server_ms": float(np.mean([r["server_ms"] for r in ok])) if ok else float("nan"),
        "server_timing_ms": timing,
        "forward_passes": stats["batches"], "mean_batch": stats["items"] / stats["batches"] if stats["batches"] else 0.0,
        "model_forward_ms_per_request": 1000 * stats["forward_s"] / len(ok) if ok else float("nan"),
        "cpu_ms_per_request": {k: 1000 * v / len(ok) if ok else float("nan") for k, v in cpu.items()},
        "cpu_cores_busy": {k: v / seconds for k, v in cpu.items()},
        "mean_levels_tried": float(np.mean([r["tried"] for r in ok])) if ok else float("nan"),
        "correct_by_sample": {r["sample"]: r["correct"] for r in ok},
        "answered": {str(lv): levels.count(lv) / len(levels) for lv in sorted(set(levels))},
    }


def model_stats(handle) -> dict[str, Any]:
    return handle.stats.remote().result()


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in ("batches", "items", "forward_s")}


def kill_phase(url: str, samples: list[dict], clients: int, seconds: float, kill_at: float, handle,
               counter: Iterator[int]) -> dict[str, Any]:
    """Load for ``seconds``; at ``kill_at`` SIGKILL the model replica; what clients and /healthz saw."""
    victim = model_stats(handle)["pid"]

    async def scenario() -> tuple[list[dict], list[dict], float]:
        async def killer() -> float:
            await asyncio.sleep(kill_at)
            os.kill(victim, signal.SIGKILL)
            return kill_at
        load = asyncio.ensure_future(run_phase(url, samples, clients, seconds, counter))
        health = asyncio.ensure_future(watch_health(url, seconds))
        killed = await killer()
        return await load, await health, killed

    records, health, killed = asyncio.run(scenario())
    after = sorted((r for r in records if r["t0"] >= killed), key=lambda r: r["t0"])
    first_ok = next((r["t0"] + r["ms"] / 1000 for r in after if r["status"] == 200), None)
    in_gap = [r for r in records if r["t0"] + r["ms"] / 1000 >= killed and (first_ok is None or r["t0"] <= first_ok)]
    failed = [r for r in in_gap if r["status"] != 200]
    not_ready = [h for h in health if h["t"] >= killed and h["status"] != 200]
    deadline = time.time() + 60
    while True:  # Serve's replacement: a new pid answers
        try:
            new_pid = model_stats(handle)["pid"]
            if new_pid != victim:
                break
        except Exception:  # noqa: BLE001 - the handle fails while no replica runs
            pass
        if time.time() > deadline:
            new_pid = None
            break
        time.sleep(0.5)
    statuses: dict[str, int] = {}
    for r in failed:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"killed_pid": victim, "new_pid": new_pid, "kill_at_s": killed, "clients": clients,
            "gap_s": None if first_ok is None else first_ok - killed,
            "requests_in_gap": len(in_gap), "failed_in_gap": len(failed), "failed_statuses": statuses,
            "failed_non_json": sum(1 for r in failed if not r["json"]),
            "failed_max_ms": max((r["ms"] for r in failed), default=0.0),
            "failed_p50_ms": float(np.median([r["ms"] for r in failed])) if failed else None,
            "failed_reasons": sorted({r.get("error", "")[:120] for r in failed})[:5],
            "readiness_503_from_s": not_ready[0]["t"] - killed if not_ready else None,
            "readiness_503_until_s": not_ready[-1]["t"] - killed if not_ready else None,
            "readiness_checks_not_ready": len(not_ready),
            "readiness_max_ms": max((h["ms"] for h in health), default=0.0)}


def saturating_clients(sweep: list[dict], within: float = 0.9) -> int:
    """The smallest client count whose throughput reaches ``within`` x the best of the sweep: more clients
    only queue."""
    best = max(p["throughput_rps"] for p in sweep)
    return min(p["clients"] for p in sweep if p["throughput_rps"] >= within * best)


def overload_goals(phases: list[dict], factor: int) -> dict[str, dict]:
    """Issue 26's goals per arm, from the medians over rounds at the smallest client count (1x) and ``factor``
    times it: goodput >= 0.8x, admitted p99 <= 3 s and <= 3x the 1x p99, every 503 JSON and under 50 ms."""
    out = {}
    for arm in sorted({p["arm"] for p in phases}):
        ph = [p for p in phases if p["arm"] == arm]
        base = min(p["clients"] for p in ph)
        one, over = [p for p in ph if p["clients"] == base], [p for p in ph if p["clients"] == factor * base]
        if not over:
            continue
        med = lambda rows, key: float(np.median([r[key] for r in rows if r[key] is not None] or [np.nan]))  # noqa: E731
        rps1, rps4, p99_1, p99_4 = (med(one, "throughput_rps"), med(over, "throughput_rps"), med(one, "p99_ms"),
                                    med(over, "p99_ms"))
        rejected_p99 = max((r["rejected_p99_ms"] for r in over if r["rejected_p99_ms"] is not None), default=None)
        n503 = sum(r["status_503"] for r in over)
        out[arm] = {"clients": [base, factor * base], "throughput_rps": [rps1, rps4], "goodput_ratio": rps4 / rps1,
                    "p50_ms": [med(one, "p50_ms"), med(over, "p50_ms")], "p99_ms": [p99_1, p99_4],
                    "p99_ratio": p99_4 / p99_1, "status_503": n503,
                    "status_503_json": sum(r["status_503_json"] for r in over),
                    "status_503_front": sum(r["status_503_front"] for r in over),
                    "rejected_p50_ms": med(over, "rejected_p50_ms"), "rejected_p99_ms_worst_round": rejected_p99,
                    "goals": {"goodput_ratio>=0.8": rps4 / rps1 >= 0.8, "p99<=3s": p99_4 <= 3000,
                              "p99<=3x_saturated": p99_4 <= 3 * p99_1,
                              "503_json_under_50ms": n503 == 0 or (rejected_p99 is not None and rejected_p99 < 50 and
                                                                   sum(r["status_503_json"] for r in over) == n503)}}
    return out


def format_goals(goals: dict[str, dict]) -> str:
    lines = []
    for arm, g in goals.items():
        met = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in g["goals"].items())
        lines.append(f"overload {arm}: {g['clients'][0]} -> {g['clients'][1]} clients: goodput "
                     f"{g['throughput_rps'][0]:.1f} -> {g['throughput_rps'][1]:.1f} req/s ({g['goodput_ratio']:.2f}x), "
                     f"p99 {g['p99_ms'][0]:.0f} -> {g['p99_ms'][1]:.0f} ms ({g['p99_ratio']:.2f}x), "
                     f"{g['status_503']} 503s ({g['status_503_json']} JSON, {g['status_503_front']} by the front), 503 p50 {g['rejected_p50_ms']:.1f} ms, "
                     f"worst round's 503 p99 {g['rejected_p99_ms_worst_round'] or float('nan'):.1f} ms; {met}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint to serve (thresholds.json beside it)")
    p.add_argument("--thresholds", default="", help="calibration file (default CHECKPOINT_DIR/thresholds.json)")
    p.add_argument("--data", default="", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", default="test", help="split whose raw inputs are sent")
    p.add_argument("--samples", type=int, default=1000, help="distinct inputs, cycled")
    p.add_argument("--arms", default="cascade,unbatched,level0", help=f"comma-separated, of {sorted(ARMS)}")
    p.add_argument("--clients", default="32,128", help="comma-separated concurrent HTTP client counts")
    p.add_argument("--seconds", type=float, default=12, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds of load before each phase")
    p.add_argument("--rounds", type=int, default=2, help="rounds over every (clients, arm); order alternates")
    p.add_argument("--kill", action="store_true", help="end with a phase that kills the model replica mid-run")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the embedded Ray")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ServeConfig override for every arm, e.g. --set ingress_replicas=2 (repeatable)")
    p.add_argument("--saturation", default="", metavar="N,N,...",
                   help="first sweep these client counts on the first arm, take the smallest whose throughput is "
                        "within 10%% of the sweep's best as 1x, and measure 1x and --overload x it (replaces --clients)")
    p.add_argument("--client", choices=("aiohttp", "wrk"), default="aiohttp",
                   help="load generator: aiohttp in this process (default), or wrk (Debian; C, one connection per "
                        "thread, bench/wrk_post.lua), whose CPU per request is a fraction of aiohttp's")
    p.add_argument("--client-cpus", default="", metavar="N,N",
                   help="pin the clients (this process's main thread, after Ray started) to these CPU ids")
    p.add_argument("--overload", type=int, default=4, help="the overload factor of --saturation (default 4)")
    p.add_argument("--ignore-retry-after", action="store_true",
                   help="clients send again at once after a 503 (default: they wait its Retry-After)")
    p.add_argument("--output", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if unknown := [a for a in arms if a not in ARMS]:
        p.error(f"unknown arm(s) {unknown}; choose from {sorted(ARMS)}")
    client_counts = [int(c) for c in args.clients.split(",") if c]

    import ray
    from ray import serve

    from icpc.config import finalize
    from icpc.inference.calibrate import raw_inputs
    from icpc.inference.front import free_port
    from icpc.inference.thresholds import OFF
    from icpc.inference.serve import (APP_NAME, ServeConfig, deploy, model_info, patient_proxy_start, start_serve,
                                      stop_serve)
    from icpc.modelio import load_checkpoint

    data = args.data or load_checkpoint(args.checkpoint)["data"]
    samples = raw_inputs(data, args.split, args.samples)
    port = free_port()
    cfg = finalize(ServeConfig(checkpoint=args.checkpoint, thresholds=args.thresholds, port=port), args.set)
    levels = len(model_info(args.checkpoint)["spec"]["ladder"])
    level0 = [0.0] + [OFF] * (levels - 1)
    load_before = os.getloadavg()
    patient_proxy_start()   # before Ray starts: Serve's controller inherits it
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    phases: list[dict] = []
    sweep: list[dict] = []
    counter = itertools.count()
    kill = None
    try:
        url = start_serve(cfg)
        classifier = serve.get_deployment_handle("Classifier", APP_NAME)
        if args.client_cpus:   # the calling thread only: Ray's processes and threads keep every core
            os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
        pids: list[int] = []
        workdir = Path(tempfile.mkdtemp(prefix="icpc-load-"))

        behind = f"http://127.0.0.1:{cfg.serve_port}" if cfg.serve_port else url   # Serve's own proxy

        def load(clients: int, seconds: float, via: str) -> list[dict]:
            target = url if via == "front" else behind
            if args.client == "wrk":
                return run_phase_wrk(target, samples, clients, seconds, workdir, not args.ignore_retry_after)
            return asyncio.run(run_phase(target, samples, clients, seconds, counter, not args.ignore_retry_after))

        def measure(arm: str, clients: int, rnd: int) -> dict:
            """One phase: the arm deployed through user_config, warm-up, then ``args.seconds`` measured."""
            change = dict(ARMS[arm])
            if change.pop("level0", False):
                change["set_thresholds"] = level0
            via = change.pop("via", "serve")
            if via == "front" and not cfg.serve_port:
                raise SystemExit(f"arm {arm} needs the HAProxy front: install haproxy, or leave --set front=none out")
            arm_cfg = ServeConfig(**{**cfg.__dict__, **change})
            deploy(arm_cfg)
            load(clients, args.warmup, via)
            before, cpu0 = model_stats(classifier), cpu_seconds()
            t0 = time.perf_counter()
            records = load(clients, args.seconds, via)
            elapsed = time.perf_counter() - t0
            after, cpu1 = model_stats(classifier), cpu_seconds()
            assert after["batching"] == arm_cfg.batching and after["pid"] == before["pid"]
            pids.append(after["pid"])
            assert len(set(pids)) == 1, "the model replica was replaced between arms"
            phase = summarize(records, elapsed, diff(after, before), {k: cpu1[k] - cpu0[k] for k in cpu1})
            phase.update(round=rnd, arm=arm, clients=clients, loadavg=os.getloadavg()[0])
            other = phase["server_errors"] - phase["status_503"] - phase["status_504"]
            rejected = phase["rejected_p99_ms"]
            print(f"round {rnd} {clients:>4} clients {arm:<17}{phase['throughput_rps']:7.1f} req/s  "
                  f"p50 {phase['p50_ms']:7.1f}  p99 {phase['p99_ms']:7.1f} ms  503 {phase['status_503']:>4} "
                  f"(p99 {'-' if rejected is None else f'{rejected:.1f}'} ms)  504 {phase['status_504']}  "
                  f"other 5xx {other}  batch {phase['mean_batch']:4.1f}  tried {phase['mean_levels_tried']:.2f}  "
                  f"load {phase['loadavg']:.1f}", flush=True)
            return phase

        if args.saturation:
            sweep = [measure(arms[0], clients, 0) for clients in (int(c) for c in args.saturation.split(",") if c)]
            saturating = saturating_clients(sweep)
            client_counts = [saturating, args.overload * saturating]
            print(f"saturating client count ({arms[0]}): {saturating}; measuring {client_counts}", flush=True)
        for rnd in range(args.rounds):
            for clients in client_counts:
                for arm in (arms if rnd % 2 == 0 else arms[::-1]):
                    phases.append(measure(arm, clients, rnd + 1))
        if args.kill:
            deploy(cfg)
            asyncio.run(run_phase(url, samples, 32, args.warmup, counter))
            kill = kill_phase(url, samples, 32, 25.0, 4.0, classifier, counter)
            print(f"kill: gap {kill['gap_s']} s, {kill['failed_in_gap']} failed {kill['failed_statuses']} "
                  f"(max {kill['failed_max_ms']:.0f} ms, non-JSON {kill['failed_non_json']}); readiness 503 from "
                  f"+{kill['readiness_503_from_s']} to +{kill['readiness_503_until_s']} s; new pid {kill['new_pid']}",
                  flush=True)
    finally:
        stop_serve()
        ray.shutdown()
    report = {"command": " ".join([sys.executable, *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
              "cpus": os.cpu_count(), "client": args.client, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "samples": len(samples), "split": args.split,
              "model": {k: v for k, v in model_info(args.checkpoint).items() if k != "spec"},
              "serve": cfg.__dict__, "phases": phases, "kill": kill,
              "saturation_sweep": sweep if args.saturation else None, "overload": overload_goals(phases, args.overload),
              "total": totals(phases), "served_accuracy": accuracy(phases)}
    for ph in phases:
        ph.pop("correct_by_sample")
    print(format_totals(report))
    print(format_goals(report["overload"]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")
    return 0


def accuracy(phases: list[dict]) -> dict[str, dict]:
    """Per arm: accuracy over the distinct samples it answered, and against level0 on the samples both answered."""
    answers: dict[str, dict[int, bool]] = {}
    for p in phases:
        answers.setdefault(p["arm"], {}).update(p["correct_by_sample"])
    out: dict[str, dict] = {}
    for arm, got in sorted(answers.items()):
        out[arm] = {"samples": len(got), "accuracy": sum(got.values()) / max(1, len(got))}
        common = sorted(set(got) & set(answers.get("level0", {}))) if arm != "level0" else []
        if common:
            out[arm]["vs_level0"] = {"samples": len(common), "points": 100 * sum(
                got[i] - answers["level0"][i] for i in common) / max(1, len(common))}
    return out


def totals(phases: list[dict]) -> dict[str, dict]:
    """Per (arm, clients): medians over rounds of throughput and latencies; summed statuses."""
    out: dict[str, dict] = {}
    for key in sorted({(p["arm"], p["clients"]) for p in phases}):
        ph = [p for p in phases if (p["arm"], p["clients"]) == key]
        out[f"{key[0]}@{key[1]}"] = {
            "arm": key[0], "clients": key[1], "rounds": len(ph),
            "throughput_rps": float(np.median([p["throughput_rps"] for p in ph])),
            "p50_ms": float(np.median([p["p50_ms"] for p in ph])), "p99_ms": float(np.median([p["p99_ms"] for p in ph])),
            "mean_batch": float(np.median([p["mean_batch"] for p in ph])),
            "mean_levels_tried": float(np.median([p["mean_levels_tried"] for p in ph])),
            "requests": sum(p["requests"] for p in ph), "server_errors": sum(p["server_errors"] for p in ph),
            "status_503": sum(p["status_503"] for p in ph), "status_504": sum(p["status_504"] for p in ph),
            "non_json_errors": sum(p["non_json_errors"] for p in ph),
            "server_timing_ms": {k: float(np.median([p["server_timing_ms"][k] for p in ph]))
                                 for k in TIMING},
            "model_forward_ms_per_request": float(np.median([p["model_forward_ms_per_request"] for p in ph])),
            "cpu_ms_per_request": {k: float(np.median([p["cpu_ms_per_request"][k] for p in ph]))
                                   for k in ph[0]["cpu_ms_per_request"]},
        }
    return out


def format_totals(report: dict) -> str:
    lines = [f"{'arm@clients':<24}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}{'tried':>7}{'503':>6}{'504':>5}"
             f"{'5xx':>5}  cpu ms/request (client proxy ingress model)"]
    for key, t in report["total"].items():
        cpu = t["cpu_ms_per_request"]
        lines.append(f"{key:<24}{t['throughput_rps']:>8.1f}{t['p50_ms']:>9.1f}{t['p99_ms']:>9.1f}{t['mean_batch']:>7.1f}"
                     f"{t['mean_levels_tried']:>7.2f}{t['status_503']:>6}{t['status_504']:>5}{t['server_errors']:>5}  "
                     f"{cpu['client']:.1f} {cpu['proxy']:.1f} {cpu['ingress']:.1f} {cpu['model']:.1f}")
    for arm, a in report["served_accuracy"].items():
        vs = (f" ({a['vs_level0']['points']:+.2f} points vs level0 on {a['vs_level0']['samples']} common samples)"
              if "vs_level0" in a else "")
        lines.append(f"served accuracy {arm}: {a['accuracy']:.4f} over {a['samples']} distinct samples{vs}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
