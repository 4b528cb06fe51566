"""``icpc demo``: one modality end to end, ICPC against the level-0 baseline, on this machine.

Builds the modality's demo data set offline (image: a class-balanced Fashion-MNIST subset from
Debian's dataset-fashion-mnist), compresses it with a Ray job, trains the baseline and ICPC (the
modality's default schedule) with two-process DDP (torchrun, gloo), reporting level-0 test
accuracy after every epoch, certifies the ICPC cascade's thresholds on the val split (Learn then
Test; the checkpoint is then servable: ``icpc serve --checkpoint WORKDIR/icpc/last.pt``), evaluates
both at every level and prints the comparison a user judges by: accuracy against training time, at
equal epochs and at equal time, and the test figures of the cascade the server runs (the thresholds
in thresholds.json, never a threshold picked on test). Writes ``summary.md``, ``summary.json`` and ``curves.png`` under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from icpc.config import EvalConfig, finalize
from icpc.demo import DATASETS, DEMOS, Demo


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

    def stage(name: str) -> None:
        print(f"\n== {name} ({(time.perf_counter() - started) / 60:.1f} min) ==", flush=True)

    stage(f"build the {args.modality} demo data set ({demo.dataset})")
    train, test = args.train or demo.train, args.test or demo.test
    counts = DATASETS[demo.dataset](str(work / demo.dataset), train, test, 0)
    raw = work / demo.dataset / demo.input_name if demo.input_name else work / demo.dataset
    print(f"{counts} samples in {work / demo.dataset}")

    stage("compress (Ray job)")
    cfg = finalize(CompressConfig(modality=args.modality, input=str(raw), output=str(work / "data"),
                                  overwrite=True, shard_samples=demo.shard_samples), demo.compress_sets)
    print(format_summary(run_compress(cfg)))
    ray.shutdown()  # give the cores back to the trainers

    runs = arms(demo, args.epochs)
    for name, (epochs, sets) in runs.items():
        stage(f"train {name}: {epochs} epochs ({args.nproc_per_node}-process DDP)")
        rc = launch_torchrun(args.nproc_per_node, ["train", "--data", str(work / "data"), "--output",
                                                   str(work / name), "--epochs", str(epochs),
                                                   *(x for kv in sets for x in ("--set", kv))], str(work / name))
        if rc:
            print(f"training {name} failed (exit {rc})")
            return rc

    stage("calibrate the ICPC cascade (Learn then Test on val; thresholds.json beside the checkpoint, for icpc serve)")
    calibration = calibrate(finalize(CalibrateConfig(checkpoint=str(work / "icpc" / "last.pt"))))
    print(format_calibration(calibration))
    reports = {}
    for name in runs:
        stage(f"evaluate {name}")
        reports[name] = evaluate(finalize(EvalConfig(checkpoint=str(work / name / "last.pt"))))
        print(format_report(reports[name]))

    curves = {n: curve(work / n / "metrics.csv") for n in runs}
    plot_curves(curves, work / "curves.png")
    wall = time.perf_counter() - started
    text = comparison(reports, curves, demo) + "\n" + cascade_summary(calibration) + (
        f"\n\ndemo wall time {wall / 60:.1f} min; everything is in {work}/ (curves.png: test accuracy against "
        f"training time)\nserve the calibrated cascade: icpc serve --checkpoint {work / 'icpc' / 'last.pt'}")
    (work / "summary.md").write_text(text + "\n")
    (work / "summary.json").write_text(json.dumps({"wall_seconds": wall, "curves": curves, "reports": {
        n: {k: r[k] for k in ("levels", "calibrated", "samples")} for n, r in reports.items()},
        "cascade": {k: calibration.get(k) for k in ("thresholds", "certified", "guarantee", "epsilon", "delta", "loss",
                                                      "n", "test")}}, indent=2))
    print("\n" + text)
    return 0


def arms(demo: Demo, epochs: int = 0) -> dict[str, tuple[int, list[str]]]:
    """The demo's two training runs: name -> (epochs, config overrides); ``epochs`` overrides both."""
    common = ["test_each_epoch=true", *demo.train_sets]
    return {"baseline": (epochs or demo.baseline_epochs, ["baseline=true", *common]),
            "icpc": (epochs or demo.epochs, [*common, *demo.icpc_sets])}


def curve(metrics_csv: Path) -> dict[str, list[float]]:
    """Per epoch: cumulative training seconds and tokens, level-0 test accuracy (metrics.csv)."""
    from icpc.training.metrics import read_csv

    rows = read_csv(str(metrics_csv))
    return {"seconds": np.cumsum([float(r["epoch_seconds"]) for r in rows]).tolist(),
            "tokens": np.cumsum([int(r["tokens"]) for r in rows]).tolist(),
            "test_acc": [float(r["test_acc"]) for r in rows]}


def at_time(c: dict[str, list[float]], seconds: float) -> float:
    """A run's test accuracy at ``seconds`` of training (linear between epoch ends; its first epoch before)."""
    return float(np.interp(seconds, c["seconds"], c["test_acc"]))


def comparison(reports: dict[str, dict[str, Any]], curves: dict[str, dict[str, list[float]]], demo: Demo) -> str:
    """Markdown: test accuracy per level, training time and tokens of both runs, the equal-time comparison."""
    icpc, base = reports["icpc"], reports["baseline"]
    ci, cb = curves["icpc"], curves["baseline"]
    lines = ["| test accuracy | " + " | ".join(f"L{lv['level']} {lv['name']} ({lv.get('mean_tokens', lv['tokens']):.4g} tok)"
                                                for lv in icpc["levels"]) + " | epochs | training s | M tokens |",
             "|---|" + "---|" * (len(icpc["levels"]) + 3)]
    for name, r, c in (("ICPC", icpc, ci), ("baseline", base, cb)):
        lines.append(f"| {name} | " + " | ".join(f"{lv['accuracy']:.4f}" for lv in r["levels"])
                     + f" | {len(c['seconds'])} | {c['seconds'][-1]:.0f} | {c['tokens'][-1] / 1e6:.1f} |")
    a_i, a_b = icpc["levels"][0]["accuracy"], base["levels"][0]["accuracy"]
    ratio = ci["seconds"][-1] / cb["seconds"][-1]
    lines += ["",
              f"Level 0, ICPC ({demo.schedule}) vs the baseline: {a_i:.4f} vs {a_b:.4f} ({100 * (a_i - a_b):+.2f} pts) "
              f"in {ratio:.2f}x the baseline's training time and {ci['tokens'][-1] / cb['tokens'][-1]:.2f}x its tokens.",
              f"At equal time ({ci['seconds'][-1]:.0f} s of training): ICPC {a_i:.4f}, the baseline "
              f"{at_time(cb, ci['seconds'][-1]):.4f} (its test accuracy at that point of its run); one seed on a shared "
              f"machine: bench/time_to_accuracy.py runs the seeds (BENCHMARKS.md)."]
    return "\n".join(lines)


def cascade_summary(calibration: dict[str, Any]) -> str:
    """The served cascade in one paragraph: the thresholds in thresholds.json, what they certify, their test figures."""
    t = calibration.get("test")
    head = (f"ICPC cascade as served (thresholds.json {calibration['thresholds']}, Learn then Test on "
            f"{calibration['n']} {calibration['split']} samples, epsilon {calibration['epsilon']:g}, delta {calibration['delta']:g}): ")
    if not calibration["certified"]:
        head += f"NO SAVING CERTIFIED - {calibration['guarantee']}."
    else:
        head += f"certified: {calibration['guarantee']}."
    if t is None:
        return head
    cost = f", {t['cost_ratio']:.2f}x its {calibration['cost']} cost" if calibration["cost"] != "tokens" else ""
    return (head + f"\nOn test ({t['samples']} samples): accuracy {t['accuracy']:.4f} ({100 * t['accuracy_delta']:+.2f} "
            f"pts vs level 0) at {t['token_ratio']:.2f}x the tokens of level 0{cost}; answered per level "
            f"{ {k: round(v, 4) for k, v in t['answered'].items() if v} }. The threshold sweep on test is a curve "
            f"(icpc/eval/cascade.png), not a result.")


def plot_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, c in curves.items():
        axes[0].plot(c["seconds"], c["test_acc"], "o-", label=name)
        axes[1].plot(np.asarray(c["tokens"]) / 1e6, c["test_acc"], "o-", label=name)
    axes[0].set_xlabel("training time (s)")
    axes[1].set_xlabel("tokens processed (millions)")
    for ax in axes:
        ax.set_ylabel("level-0 test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
