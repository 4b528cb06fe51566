"""Benchmark: ``icpc compress`` throughput on 1 and 2 CPUs, and the driver's peak memory at two dataset sizes, in one run.

    .venv/bin/python bench/compress_scaling.py --workdir runs/bench-compress --repeats 3
    .venv/bin/python bench/compress_scaling.py --workdir runs/bench-compress --scaling 6600 --memory 10000,40000

Inputs are Fashion-MNIST PNGs (``icpc datasets fashion-mnist``, 90% train, 10% test), built once
in ``--workdir``. Scaling: each repeat compresses the ``--scaling`` set once per CPU count, the
arms in alternating order; an arm with N CPUs runs the whole job (driver, Ray's processes, the
workers) pinned to N cores with ``taskset`` and ``--set num_cpus=N``, because Ray's ``num_cpus``
only counts slots and does not stop a task from running on another core. Before each arm a
control (N processes hashing on the same N pinned cores) measures how much parallel CPU the
machine grants right now: on a shared machine with CFS autogroup, a session gets its share of
the CPUs whatever its affinity, so a job cannot scale further than the control does. The tasks'
own CPU seconds (``task_seconds.cpu``) give the cores they kept busy. Memory: one run per
``--memory`` size, reporting the driver's peak RSS (``ru_maxrss`` of the driver process itself,
which holds the listing and collects the shard summaries), also per phase. Every run records the
1-minute load average before it; read the ratios of medians. Writes the figures as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_images(folder: Path, samples: int) -> Path:
    """``samples`` Fashion-MNIST PNGs (90% train, 10% test) in ``folder``, built once."""
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        test = samples // 10
        subprocess.run([sys.executable, "-m", "icpc.cli", "datasets", "fashion-mnist", "--output", str(folder),
                        "--train", str(samples - test), "--test", str(test)], check=True, cwd=REPO)
        done.write_text(str(samples))
    return folder


def pinned(cpus: int | None, cmd: list[str]) -> list[str]:
    """``cmd`` run on the first ``cpus`` cores this process may use (``taskset``); unchanged for None."""
    if not cpus:
        return cmd
    return ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cpus]), *cmd]


CONTROL = """
import hashlib, multiprocessing as mp, sys, time
def work(_):
    block = bytes(1 << 20)
    h = hashlib.sha256()
    for _ in range(400):
        h.update(block)
n = int(sys.argv[1])
t = time.perf_counter()
with mp.get_context("fork").Pool(n) as pool:
    pool.map(work, range(n))
print(n * 400 / (time.perf_counter() - t))
"""


def control(cpus: int) -> float:
    """MB/s of ``cpus`` processes hashing on ``cpus`` pinned cores: how much parallel CPU the machine gives now."""
    proc = subprocess.run(pinned(cpus, [sys.executable, "-c", CONTROL, str(cpus)]), capture_output=True, text=True,
                          check=True)
    return float(proc.stdout.strip())


def one_run(images: Path, cpus: int | None, sets: list[str]) -> dict:
    """One compress job in a fresh process (pinned to ``cpus`` cores); its summary plus the load average before."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="icpc-bench-") as out:
        cmd = pinned(cpus, [sys.executable, __file__, "--child", str(images), out, *sets])
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["load_before"] = load
    return summary


def child(images: str, out: str, sets: list[str]) -> None:
    """Run the job in this process and print its summary as one JSON line."""
    from icpc.config import finalize
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import run_compress

    cfg = finalize(CompressConfig(input=images, output=out), sets)
    print(json.dumps(run_compress(cfg, progress=False)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/bench-compress", help="folder for the generated input images")
    p.add_argument("--scaling", type=int, default=6600, help="images of the 1-vs-2-CPU comparison (0 = skip)")
    p.add_argument("--cpus", default="1,2", help="CPU counts to compare")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the scaling comparison")
    p.add_argument("--memory", default="10000,40000", help="dataset sizes of the driver-memory comparison ('' = skip)")
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every run (KEY=VALUE)")
    p.add_argument("--out", default="bench/results/compress_scaling.json", help="JSON file for the figures")
    args = p.parse_args()
    work = Path(args.workdir)
    results: dict = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "command": " ".join(sys.argv),
                     "cores_visible": len(os.sched_getaffinity(0)), "scaling": {}, "memory": {}}
    print(f"{results['date']}; {results['cores_visible']} cores visible; load {os.getloadavg()}", flush=True)

    if args.scaling:
        images = build_images(work / f"fmnist-{args.scaling}", args.scaling)
        counts = [int(c) for c in args.cpus.split(",")]
        runs: dict[int, list[dict]] = {c: [] for c in counts}
        for r in range(args.repeats):
            for c in (counts if r % 2 == 0 else counts[::-1]):
                ctl = control(c)
                s = one_run(images, c, [f"num_cpus={c}", *args.set])
                s["control_mb_per_s"] = ctl
                # CPU the job's tasks got per second of the compress phase (1.0 = one core busy all along)
                s["task_cores"] = s["task_seconds"]["cpu"] / s["phases"]["compress"]
                runs[c].append(s)
                print(f"repeat {r + 1}/{args.repeats} cpus {c}: compress phase {s['compress_samples_per_s']:.0f} "
                      f"samples/s, whole job {s['samples_per_s']:.0f} samples/s, phases {s['phases']}, "
                      f"task seconds {s['task_seconds']} ({s['task_cores']:.2f} cores busy), control "
                      f"{ctl:.0f} MB/s, load before {s['load_before']:.1f}", flush=True)
        for c, rs in runs.items():
            results["scaling"][c] = {
                "compress_samples_per_s": statistics.median(s["compress_samples_per_s"] for s in rs),
                "job_samples_per_s": statistics.median(s["samples_per_s"] for s in rs),
                "phases": {k: statistics.median(s["phases"][k] for s in rs) for k in rs[0]["phases"]},
                "task_seconds": {k: statistics.median(s["task_seconds"][k] for s in rs) for k in rs[0]["task_seconds"]},
                "task_cores": statistics.median(s["task_cores"] for s in rs),
                "cpu_ms_per_sample": statistics.median(1000 * s["task_seconds"]["cpu"] / s["samples"] for s in rs),
                "control_mb_per_s": statistics.median(s["control_mb_per_s"] for s in rs),
                "load_before": [round(s["load_before"], 1) for s in rs], "runs": len(rs)}
        lo, hi = counts[0], counts[-1]
        for key in ("compress_samples_per_s", "job_samples_per_s", "control_mb_per_s", "task_cores"):
            ratio = results["scaling"][hi][key] / results["scaling"][lo][key]
            results["scaling"][f"ratio_{key}"] = round(ratio, 2)
            print(f"median {key}: " + ", ".join(f"{c} cpu {results['scaling'][c][key]:.0f}" for c in counts)
                  + f" -> {hi}/{lo} = {ratio:.2f}x", flush=True)

    sizes = [int(n) for n in args.memory.split(",") if n]
    if sizes:
        folders = {n: build_images(work / f"fmnist-{n}", n) for n in sizes}
        for n in sizes:  # one run each: the peak RSS of a deterministic job varies little
            s = one_run(folders[n], None, list(args.set))
            results["memory"][n] = {"driver_peak_rss_mb": s["driver_peak_rss_mb"], "samples": s["samples"],
                                    "driver_peak_rss_mb_by_phase": s["driver_peak_rss_mb_by_phase"],
                                    "seconds": round(s["seconds"], 1), "phases": s["phases"],
                                    "load_before": round(s["load_before"], 1)}
            print(f"{n} images: driver peak RSS {s['driver_peak_rss_mb']} MB (by phase "
                  f"{s['driver_peak_rss_mb_by_phase']}), {s['seconds']:.0f} s, "
                  f"phases {s['phases']}, load before {s['load_before']:.1f}", flush=True)
        lo, hi = min(sizes), max(sizes)
        ratio = results["memory"][hi]["driver_peak_rss_mb"] / results["memory"][lo]["driver_peak_rss_mb"]
        results["memory"]["ratio"] = round(ratio, 3)
        print(f"driver peak RSS {hi} vs {lo} images: {ratio:.3f}x", flush=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
