"""``icpc evaluate``: accuracy and measured time at every level, the calibrated cascade, and a threshold sweep.

The cascade figure it reports is the one with the thresholds ``icpc serve`` loads (thresholds.json
from ``icpc calibrate``, chosen on another split); the sweep over thresholds on the evaluated split
is a curve (cascade.png, cascade.csv) for reading the trade-off, never a result: a threshold picked
from it is chosen on the data it would be reported on.

Also the device handling that evaluation, calibration and serving share (``resolve_device``,
``autocast_dtype``, ``to_device``): all three run the model where serving runs it.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import numpy as np
import torch

from icpc import storage
from icpc.config import EvalConfig, to_dict
from icpc.contract import Spec, check_spec
from icpc.dataset import read_manifest, split_shards
from icpc.inference.cascade_report import cascade_figures, format_figures
from icpc.inference.thresholds import THRESHOLDS_FILE, load_thresholds
from icpc.devices import autocast_dtype, inference, model_device, resolve_device, synchronize, to_device
from icpc.modelio import load_model
from icpc.reports import save_figure, write_csv, write_json
from icpc.training.data import eval_batches

PROBS_FILE = "probs.npz"   # per-level probabilities, labels, keys and tokens: what the cascade figures come from
LATENCY_SAMPLES = 64   # samples timed one at a time per level (batch size 1, as a server sees them)


# ----------------------------------------------------------------------------- device


# ----------------------------------------------------------------------------- evaluation


def predict_level(model, shards: list[str], spec: Spec, level: int, cfg: EvalConfig, strategy: str,
                  dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Probabilities, labels and batched compute time of every sample at one level.

    Runs on the model's device (autocast to ``dtype`` if given); the time covers the GPU's work.
    The first batch runs once untimed, so one-off start-up costs (allocator, thread pool, CUDA
    kernels) do not land on whichever level is measured first.
    """
    device = model_device(model)
    probs, labels, keys, lengths, seconds = [], [], [], [], 0.0
    for i, batch in enumerate(eval_batches(shards, spec, level, batch_size=cfg.batch_size, strategy=strategy,
                                           limit=cfg.limit)):
        inputs = to_device(batch, device)
        with inference(device, dtype):
            if i == 0:
                model(inputs[0], inputs[1], level, inputs[2])
            synchronize(device)
            t0 = time.perf_counter()
            logits = model(inputs[0], inputs[1], level, inputs[2])
            synchronize(device)
            seconds += time.perf_counter() - t0
        probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
        labels.append(batch["labels"].numpy())
        keys += batch["keys"]
        mask = batch["padding_mask"]  # per-sample token counts (text varies; grids are all equal)
        lengths.append(np.full(len(batch["keys"]), batch["tokens"].shape[1]) if mask is None
                       else (~mask).sum(1).numpy())
    order = np.argsort(keys)  # the same sample order at every level
    return {"probs": np.concatenate(probs)[order], "labels": np.concatenate(labels)[order],
            "keys": [keys[i] for i in order], "seconds": seconds, "tokens": np.concatenate(lengths)[order]}


def latency_level(model, shards: list[str], spec: Spec, level: int, strategy: str, n: int,
                  dtype: torch.dtype | None = None) -> float:
    """Median milliseconds of one forward pass of a single sample (batch size 1) at ``level``, copies included."""
    device, times = model_device(model), []
    for batch in eval_batches(shards, spec, level, batch_size=1, strategy=strategy, limit=n):
        t0 = time.perf_counter()
        with inference(device, dtype):
            inputs = to_device(batch, device)
            model(inputs[0], inputs[1], level, inputs[2])
            synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run the evaluation; writes eval.json, levels.csv, cascade.csv and cascade.png."""
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    # EvalConfig has no device/precision fields yet: auto = the GPU when there is one, as serving does.
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(device, cfg.precision)
    model, spec, state = load_model(cfg.checkpoint, cfg.strategy, device=device)
    strategy = model.strategy
    data = cfg.data or state["data"]
    manifest = read_manifest(data)
    check_spec(spec, Spec.from_json(manifest["spec"]), f"evaluate {cfg.checkpoint} on {data}")
    shards = split_shards(manifest, data, cfg.split)
    out = cfg.output or storage.join(storage.parent(cfg.checkpoint), "eval")
    storage.makedirs(out)

    results = []
    for level in range(len(spec.ladder)):
        results.append(predict_level(model, shards, spec, level, cfg, strategy, dtype))
        if progress:
            print(f"  level {level} ({spec.ladder[level].name}): acc "
                  f"{(results[-1]['probs'].argmax(1) == results[-1]['labels']).mean():.4f}", flush=True)
    labels = results[0]["labels"]
    n = len(labels)
    if any(r["keys"] != results[0]["keys"] for r in results):
        raise RuntimeError("levels disagree on the sample set; the shards are inconsistent")
    probs = np.stack([r["probs"] for r in results])
    levels = []
    for level, r in enumerate(results):
        lv = spec.ladder[level]
        levels.append({"level": level, "name": lv.name, "tokens": lv.tokens,
                       "mean_tokens": float(r["tokens"].mean()),
                       "accuracy": float((r["probs"].argmax(1) == labels).mean()),
                       "ms_per_sample_batched": 1000 * r["seconds"] / n,
                       "ms_latency_bs1": latency_level(model, shards, spec, level, strategy, LATENCY_SAMPLES, dtype)})
    ref = levels[0]
    tokens = np.stack([r["tokens"] for r in results])  # (levels, n): actual tokens of each sample
    ms = [lv["ms_latency_bs1"] for lv in levels]
    sweep = []
    for t in cfg.thresholds:  # the curve: one threshold shared by every level, on this split
        f = cascade_figures(probs, labels, [t] * len(levels), tokens, ms)
        sweep.append({"threshold": t, **{k: v for k, v in f.items() if k not in ("samples", "thresholds", "order",
                                                                                 "mean_cost", "cost_ratio")},
                      "mean_ms": f["mean_cost"], "time_ratio": f["cost_ratio"]})
    calibration = cfg.calibrated or storage.join(storage.parent(cfg.checkpoint), THRESHOLDS_FILE)
    calibrated = None
    if cfg.calibrated or storage.exists(calibration):  # a file named on purpose must exist (load_thresholds says so)
        calibrated = {"source": calibration,
                      **cascade_figures(probs, labels, load_thresholds(calibration, len(levels)), tokens, ms)}
    report = {"checkpoint": str(cfg.checkpoint), "data": str(data), "split": cfg.split, "samples": n,
              "strategy": strategy, "device": device, "precision": str(dtype or torch.float32).removeprefix("torch."),
              "levels": levels, "calibrated": calibrated, "cascade": sweep, "config": to_dict(cfg)}
    write_json(storage.join(out, "eval.json"), report)
    buf = io.BytesIO()
    np.savez_compressed(buf, probs=probs.astype(np.float32), labels=labels, tokens=tokens,
                        keys=np.array(results[0]["keys"]))
    storage.write_bytes(storage.join(out, PROBS_FILE), buf.getvalue())
    write_csv(storage.join(out, "levels.csv"), levels)
    write_csv(storage.join(out, "cascade.csv"), [{**{k: v for k, v in s.items() if k != "answered"},
                                                  **{f"answered_l{k}": v for k, v in s["answered"].items()}}
                                                 for s in sweep])
    plot(report, storage.join(out, "cascade.png"))
    report["output"] = out
    return report


def plot(report: dict[str, Any], location: str) -> None:
    """Accuracy against relative cost (tokens) for each level and the cascade sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report["levels"][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [lv["mean_tokens"] / ref["mean_tokens"] for lv in report["levels"]]
    ax.plot(xs, [lv["accuracy"] for lv in report["levels"]], "o--", label="single level")
    for lv, x in zip(report["levels"], xs):
        ax.annotate(f"L{lv['level']}", (x, lv["accuracy"]), textcoords="offset points", xytext=(4, -10))
    ax.plot([s["token_ratio"] for s in report["cascade"]], [s["accuracy"] for s in report["cascade"]],
            "s-", alpha=0.6, label="cascade, one threshold swept on this split (not certified)")
    if c := report.get("calibrated"):
        ax.plot([c["token_ratio"]], [c["accuracy"]], "r*", ms=14, label="calibrated (thresholds.json, served)")
    ax.set_xlabel("mean tokens relative to level 0")
    ax.set_ylabel(f"{report['split']} accuracy")
    ax.set_title(f"accuracy vs cost ({report['samples']} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, location)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['split']} set: {r['samples']} samples, positions {r['strategy']}",
             f"{'level':<12}{'tokens':>7}{'accuracy':>10}{'ms/sample':>11}{'ms bs=1':>9}"]
    for lv in r["levels"]:
        lines.append(f"L{lv['level']} {lv['name']:<9}{lv['mean_tokens']:>7.4g}{lv['accuracy']:>10.4f}"
                     f"{lv['ms_per_sample_batched']:>11.3f}{lv['ms_latency_bs1']:>9.2f}")
    if c := r.get("calibrated"):
        lines.append(format_figures(f"calibrated cascade ({c['source']}, the thresholds icpc serve loads) on "
                                    f"{r['split']}", c, "batch-1 time"))
    else:
        lines.append("no thresholds.json beside the checkpoint: run icpc calibrate for the cascade's figure")
    lines.append(f"threshold sweep on {r['split']} ({len(r['cascade'])} shared thresholds): a curve in cascade.png and "
                 f"cascade.csv, not a result (a threshold picked from it is chosen on the data it is reported on)")
    lines.append(f"wrote {r['output']}/{{eval.json, levels.csv, cascade.csv, cascade.png, {PROBS_FILE}}}")
    return "\n".join(lines)
