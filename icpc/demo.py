"""``icpc demo``: one modality end to end, ICPC against the level-0 baseline, on this machine.

Builds the modality's demo data set offline (image: a class-balanced Fashion-MNIST subset from
Debian's dataset-fashion-mnist), compresses it with a Ray job, trains ICPC and the baseline with
two-process DDP (torchrun, gloo), evaluates both and prints a comparison table. Everything lands
under ``--workdir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from icpc.config import CompressConfig, EvalConfig, finalize


# name -> builder(output folder, train samples, test samples, seed) -> {split: count}; each builds
# a demo data set offline from Debian/PyPI packages, in the layout `icpc compress` reads.
DatasetBuilder = Callable[[Path, int, int, int], dict[str, int]]


def _fashion_mnist(output: Path, train: int, test: int, seed: int) -> dict[str, int]:
    from pipeline.sources import build_fashion_mnist

    return build_fashion_mnist(output, train, test, seed)


def _spoken_digits(output: Path, train: int, test: int, seed: int) -> dict[str, int]:
    from pipeline.audio_data import build_spoken_digits

    return build_spoken_digits(output, train, test, seed)


def _moving_fashion_mnist(output: Path, train: int, test: int, seed: int) -> dict[str, int]:
    from pipeline.video_data import build_moving_fashion_mnist

    return build_moving_fashion_mnist(output, train or 3600, test or 400, seed)


def _wordnet_glosses(output: Path, train: int, test: int, seed: int) -> dict[str, int]:
    from pipeline.text_data import build_wordnet_glosses

    return build_wordnet_glosses(output, train, test, seed)


DATASETS: dict[str, DatasetBuilder] = {
    "fashion-mnist": _fashion_mnist,
    "wordnet-glosses": _wordnet_glosses,
    "spoken-digits": _spoken_digits,
    "moving-fashion-mnist": _moving_fashion_mnist,
}


@dataclass(frozen=True)
class Demo:
    """How one modality's demo runs: build its data set, then the shared compress/train/evaluate path."""

    dataset: str                                # a DATASETS name; built into WORKDIR/<dataset>
    input_name: str = ""                        # what to pass as --input, relative to that folder ("" = the folder)
    train: int = 0                              # default training samples
    test: int = 0                               # default test samples
    epochs: int = 8
    compress_sets: tuple[str, ...] = ()         # --set overrides for icpc compress
    train_sets: tuple[str, ...] = ()            # --set overrides for icpc train
    shard_samples: int = 250


DEMOS: dict[str, Demo] = {
    "image": Demo("fashion-mnist", train=20000, test=2000, epochs=8),
    # 10 largest noun lexicographer files x 1,000 glosses (900 train, 100 test each)
    "text": Demo("wordnet-glosses", input_name="glosses.jsonl", train=9000, test=1000, epochs=6),
    # 1600 train clips: batch 32 gives 22 steps per rank and epoch (64 gave 11, too few to learn in 20 epochs)
    "audio": Demo("spoken-digits", train=1600, test=400, epochs=20, train_sets=("batch_size=32",),
                  shard_samples=100),
    "video": Demo("moving-fashion-mnist", train=3600, test=400, epochs=4, shard_samples=200,
                  train_sets=("model.dim=64", "model.depth=2", "batch_size=32")),
}


def run_demo(args: argparse.Namespace) -> int:
    import ray

    from icpc.cli import launch_torchrun
    from inference.evaluate import evaluate, format_report
    from pipeline.job import format_summary, run_compress

    demo = DEMOS[args.modality]
    work = Path(args.workdir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = time.perf_counter()
        print(f"\n== {name} ==", flush=True)

    stage(f"build the {args.modality} demo data set ({demo.dataset})")
    train, test, epochs = args.train or demo.train, args.test or demo.test, args.epochs or demo.epochs
    counts = DATASETS[demo.dataset](work / demo.dataset, train, test, 0)
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
    timings["end"] = time.perf_counter()

    table = comparison(reports, {n: _epoch_seconds(work / n / "metrics.csv") for n in runs})
    wall = time.perf_counter() - started
    text = table + f"\n\ndemo wall time {wall / 60:.1f} min; everything is in {work}/"
    (work / "summary.md").write_text(text + "\n")
    (work / "summary.json").write_text(json.dumps({"wall_seconds": wall, "reports": {
        n: {k: r[k] for k in ("levels", "chosen", "samples")} for n, r in reports.items()}}, indent=2))
    print("\n" + text)
    return 0


def _epoch_seconds(metrics_csv: Path) -> list[float]:
    with open(metrics_csv) as f:
        return [float(r["epoch_seconds"]) for r in csv.DictReader(f)]


def comparison(reports: dict[str, dict[str, Any]], epoch_seconds: dict[str, list[float]]) -> str:
    """Markdown table: test accuracy per level for each run, epoch time, and the ICPC cascade."""
    import statistics

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
