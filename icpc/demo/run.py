"""``icpc demo``: one modality end to end, ICPC against the level-0 baseline, on this machine.

Builds the modality's demo data set offline (image: a class-balanced Fashion-MNIST subset from
Debian's dataset-fashion-mnist), compresses it with a Ray job, trains ICPC and the baseline with
two-process DDP (torchrun, gloo), evaluates both, calibrates the ICPC cascade's thresholds (so the
checkpoint is servable: ``icpc serve --checkpoint WORKDIR/icpc/last.pt``) and prints a comparison
table. Everything lands under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from icpc.config import EvalConfig, finalize
from icpc.demo import DATASETS, DEMOS


def run_demo(args: argparse.Namespace) -> int:
    import ray

    from icpc.inference.calibrate import CalibrateConfig, calibrate
    from icpc.inference.calibrate import format_report as format_calibration
    from icpc.inference.evaluate import evaluate, format_report
    from icpc.pipeline.config import CompressConfig
    from icpc.pipeline.job import format_summary, run_compress
    from icpc.training.launch import launch_torchrun

    demo = DEMOS[args.modality]
    work = Path(args.workdir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = time.perf_counter()
        print(f"\n== {name} ==", flush=True)

    stage(f"build the {args.modality} demo data set ({demo.dataset})")
    train, test, epochs = args.train or demo.train, args.test or demo.test, args.epochs or demo.epochs
    counts = DATASETS[demo.dataset](str(work / demo.dataset), train, test, 0)
    raw = work / demo.dataset / demo.input_name if demo.input_name else work / demo.dataset
    print(f"{counts} samples in {work / demo.dataset}")

    stage("compress (Ray job)")
    cfg = finalize(CompressConfig(modality=args.modality, input=str(raw), output=str(work / "data"),
                                  overwrite=True, shard_samples=demo.shard_samples), demo.compress_sets)
    print(format_summary(run_compress(cfg)))
    ray.shutdown()  # give the cores back to the trainers

    common = [x for kv in demo.train_sets for x in ("--set", kv)]
    runs = {"icpc": common, "baseline": ["--baseline", *common]}
    for name, extra in runs.items():
        stage(f"train {name} ({args.nproc_per_node}-process DDP)")
        rc = launch_torchrun(args.nproc_per_node, ["train", "--data", str(work / "data"), "--output",
                                                   str(work / name), "--epochs", str(epochs), *extra])
        if rc:
            print(f"training {name} failed (exit {rc})")
            return rc

    reports = {}
    for name in runs:
        stage(f"evaluate {name}")
        reports[name] = evaluate(finalize(EvalConfig(checkpoint=str(work / name / "last.pt"))))
        print(format_report(reports[name]))
    stage("calibrate the ICPC cascade (thresholds.json beside the checkpoint, for icpc serve)")
    print(format_calibration(calibrate(finalize(CalibrateConfig(checkpoint=str(work / "icpc" / "last.pt"))))))
    timings["end"] = time.perf_counter()

    table = comparison(reports, {n: _epoch_seconds(work / n / "metrics.csv") for n in runs})
    wall = time.perf_counter() - started
    text = table + (f"\n\ndemo wall time {wall / 60:.1f} min; everything is in {work}/\n"
                    f"serve the calibrated cascade: icpc serve --checkpoint {work / 'icpc' / 'last.pt'}")
    (work / "summary.md").write_text(text + "\n")
    (work / "summary.json").write_text(json.dumps({"wall_seconds": wall, "reports": {
        n: {k: r[k] for k in ("levels", "chosen", "samples")} for n, r in reports.items()}}, indent=2))
    print("\n" + text)
    return 0


def _epoch_seconds(metrics_csv: Path) -> list[float]:
    from icpc.training.metrics import read_csv

    return [float(r["epoch_seconds"]) for r in read_csv(str(metrics_csv))]


def comparison(reports: dict[str, dict[str, Any]], epoch_seconds: dict[str, list[float]]) -> str:
    """Markdown table: test accuracy per level for each run, epoch time, and the ICPC cascade."""
    icpc, base = reports["icpc"], reports["baseline"]
    med = {n: statistics.median(s) for n, s in epoch_seconds.items()}
    lines = ["| test accuracy | " + " | ".join(f"L{lv['level']} {lv['name']} ({lv.get('mean_tokens', lv['tokens']):.4g} tok)"
                                                for lv in icpc["levels"]) + " | median epoch s |",
             "|---|" + "---|" * (len(icpc["levels"]) + 1)]
    for name, r in (("ICPC", icpc), ("baseline", base)):
        key = "icpc" if name == "ICPC" else "baseline"
        lines.append(f"| {name} | " + " | ".join(f"{lv['accuracy']:.4f}" for lv in r["levels"])
                     + f" | {med[key]:.1f} |")
    c = icpc["chosen"]
    lines += ["",
              f"ICPC vs baseline at level 0: {icpc['levels'][0]['accuracy']:.4f} vs {base['levels'][0]['accuracy']:.4f}"
              f" ({100 * (icpc['levels'][0]['accuracy'] - base['levels'][0]['accuracy']):+.2f} pts); "
              f"epoch time ratio ICPC/baseline {med['icpc'] / med['baseline']:.2f}",
              f"ICPC cascade at threshold {c['threshold']}: accuracy {c['accuracy']:.4f} "
              f"({100 * c['accuracy_delta']:+.2f} pts vs level 0) at {c['token_ratio']:.2f}x the tokens and "
              f"{c['time_ratio']:.2f}x the time of level 0; answered per level {c['answered']}"]
    return "\n".join(lines)
