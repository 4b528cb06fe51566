"""``icpc calibrate``: per-level cascade thresholds for an accuracy target at the lowest measured cost.

    icpc calibrate --checkpoint runs/icpc/last.pt                 # val split, within 0.3 points of level 0
    icpc calibrate --checkpoint runs/icpc/last.pt --tolerance 0.01 --cost tokens

The search is pure numpy over precomputed probabilities (``search_thresholds``): a sweep of one
shared threshold, then coordinate descent on each level's own threshold. A threshold above 1
takes a level out of the cascade (it could never answer, so the server does not try it).

The default cost, ``serving``, is what the server pays for each level it tries, measured on raw
inputs of the split with the server's own code on the serving device: the modality's compression
of that level, the model's forward pass at the serving batch size (``classify``) and a fixed
per-level request overhead (the ingress -> model round trip). Decoding is paid once per request
whatever the levels, so it is reported but does not change which thresholds are cheapest.
"""

from __future__ import annotations

import mimetypes
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from icpc import storage
from icpc.inference.cascade import cascade_cost, cascade_order, simulate_cascade
from icpc.inference.thresholds import OFF, THRESHOLDS_FILE, active_order
from icpc.reports import save_figure, write_json

PLOT_FILE = "calibrate.png"
MAX_ROUNDS = 10     # coordinate-descent passes over the levels (it converges in 2-3 here)
# Candidate thresholds: every 0.05, denser near 1 where a trained model's softmax scores pile up.
DEFAULT_GRID = [round(0.05 * i, 2) for i in range(20)] + [0.97, 0.98, 0.99, 0.995, 0.999]
COSTS = ("serving", "ms", "tokens")


@dataclass
class CalibrateConfig:
    """``icpc calibrate``: choose thresholds on held-out data, write them beside the checkpoint."""

    checkpoint: str = "runs/train/last.pt"
    data: str = ""                    # dataset folder; "" = the one the checkpoint was trained on
    split: str = "val"                # held-out split the thresholds are chosen on
    check_split: str = "test"         # split the chosen thresholds are then reported on ("" = none)
    tolerance: float = 0.003          # accuracy the cascade may lose against level 0 (0.003 = 0.3 points)
    cost: str = "serving"             # per-level cost: "serving" (ms the server pays per level tried, see the
                                      # module doc), "ms" (forward ms per sample at batch_size) or "tokens"
    grid: list[float] = field(default_factory=lambda: DEFAULT_GRID.copy())  # candidate thresholds of each level
    output: str = ""                  # folder for thresholds.json and calibrate.png; "" = the checkpoint's
    batch_size: int = 256             # evaluation batch (the probabilities; cost "ms")
    threads: int = 0                  # torch threads; 0 = all cores
    limit: int = 0                    # use at most this many samples per split (0 = all)
    device: str = "auto"              # where the model runs: auto (cuda when torch sees a GPU), cpu, cuda, cuda:N
    precision: str = "auto"           # autocast: auto = bf16 on a GPU (fp16 without bf16), fp32 on CPU; fp32, bf16, fp16
    serve_batch: int = 32             # cost "serving": forward batch size (the server's max_batch_size)
    serve_threads: int = 1            # cost "serving": torch threads while timing (the server's threads per replica)
    cost_samples: int = 200           # cost "serving": raw inputs of the split decoded, compressed and timed
    # cost "serving": ms per level tried outside compression and the model: the CPU the ingress and the model
    # replica spend on one handle call (about 5 ms each on the 2-core load test, notes/serving.md).
    level_overhead_ms: float = 5.0

    def validate(self) -> list[str]:
        errors = []
        if self.split not in ("train", "val", "test"):
            errors.append(f"split={self.split!r}: choose val (or train, test)")
        if self.check_split not in ("", "train", "val", "test"):
            errors.append(f"check_split={self.check_split!r}: choose test, val, train or ''")
        if not 0 <= self.tolerance < 1:
            errors.append(f"tolerance={self.tolerance}: must be in [0, 1) (0.003 = 0.3 accuracy points)")
        if self.cost not in COSTS:
            errors.append(f"cost={self.cost!r}: choose one of {COSTS}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            errors.append(f"precision={self.precision!r}: choose auto, fp32, bf16 or fp16")
        for name in ("serve_batch", "serve_threads", "cost_samples"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)}: must be positive")
        if self.level_overhead_ms < 0:
            errors.append(f"level_overhead_ms={self.level_overhead_ms}: must be >= 0")
        if not self.grid or any(not 0 <= t <= 1 for t in self.grid):
            errors.append(f"grid={self.grid}: needs values in [0, 1]")
        if self.batch_size <= 0:
            errors.append(f"batch_size={self.batch_size}: must be positive")
        return errors


# ----------------------------------------------------------------------------- pure core


def evaluate_thresholds(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float],
                        level_cost: Sequence[float]) -> dict[str, Any]:
    """Accuracy, mean cost and answering levels of the cascade over ``probs`` ``(levels, n, C)``."""
    order = active_order(thresholds)
    preds, answered, tried = simulate_cascade(probs, order, thresholds)
    return {"thresholds": [float(t) for t in thresholds], "order": order,
            "accuracy": float((preds == labels).mean()),
            "mean_cost": float(cascade_cost(answered, order, level_cost).mean()),
            "mean_levels_tried": float(tried.mean()),
            "answered": {str(lv): float((answered == lv).mean()) for lv in range(len(thresholds))}}


def search_thresholds(probs: np.ndarray, labels: np.ndarray, level_cost: Sequence[float], tolerance: float,
                      grid: Sequence[float]) -> dict[str, Any]:
    """The cheapest per-level thresholds whose accuracy is at least level 0's minus ``tolerance``.

    Starts from level 0 alone (always feasible), takes the cheapest feasible shared threshold of
    ``grid``, then improves one level at a time over ``grid`` and OFF until nothing gets cheaper.
    Returns the chosen point (``evaluate_thresholds`` fields) plus ``reference_accuracy``,
    ``min_accuracy`` and the ``shared`` sweep.
    """
    levels = probs.shape[0]
    reference = float((probs[0].argmax(1) == labels).mean())
    floor = reference - tolerance - 1e-12
    candidates = sorted({float(t) for t in grid} | {OFF})

    def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
        if a["accuracy"] < floor:
            return False
        return a["mean_cost"] < b["mean_cost"] - 1e-12 or (
            abs(a["mean_cost"] - b["mean_cost"]) <= 1e-12 and a["accuracy"] > b["accuracy"])

    best = evaluate_thresholds(probs, labels, [0.0] + [OFF] * (levels - 1), level_cost)
    shared = []
    for t in candidates:
        point = evaluate_thresholds(probs, labels, [0.0] + [t] * (levels - 1), level_cost)
        shared.append(point)
        if better(point, best):
            best = point
    for _ in range(MAX_ROUNDS):
        start = best
        for level in range(1, levels):
            for t in candidates:
                trial = list(best["thresholds"])
                trial[level] = t
                point = evaluate_thresholds(probs, labels, trial, level_cost)
                if better(point, best):
                    best = point
        if best is start:
            break
    return {**best, "reference_accuracy": reference, "min_accuracy": reference - tolerance, "shared": shared}


# ----------------------------------------------------------------------------- the job


def raw_inputs(data: str, split: str, limit: int = 0) -> list[dict[str, Any]]:
    """The raw inputs of ``split`` as a client would send them: ``{key, data (bytes), content_type, label}``.

    A sample's index ``source`` is its file, or ``FILE:record N`` of a text table (read with the
    pipeline's table reader and the dataset's text column). The first ``limit`` rows (0 = all).
    """
    from icpc.dataset import open_dataset
    from icpc.pipeline.modalities import get_modality

    dataset = open_dataset(data)
    rows = dataset.read_index(["key", "source", "label"], split=split).to_pylist()
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError(f"dataset {data} has no {split!r} samples in its index")
    media = get_modality(dataset.spec.modality).media_types[0]
    tables: dict[str, dict[int, bytes]] = {}
    out = []
    for r in rows:
        source = r["source"]
        if storage.exists(source):
            payload, kind = storage.read_bytes(source), mimetypes.guess_type(source)[0] or "application/octet-stream"
        else:
            file, _, record = source.rpartition(":")
            record = record.removeprefix("record").strip()
            if not (file and record.isdigit() and storage.exists(file)):
                raise FileNotFoundError(f"raw input {source} of {data} is not readable here; the serving cost and the "
                                        f"load test send the raw inputs the index names (or use --cost ms)")
            if file not in tables:
                tables[file] = _table_texts(file, dataset.manifest)
            payload, kind = tables[file][int(record)], "text/plain; charset=utf-8"
        out.append({"key": r["key"], "data": payload, "label": int(r["label"]),
                    "content_type": kind if kind.startswith(media) else "application/octet-stream"})
    return out


def _table_texts(location: str, manifest: dict[str, Any]) -> dict[int, bytes]:
    """{record number: raw text} of a text table, by the pipeline's own reader."""
    from icpc.pipeline.modalities.text_tables import cell_bytes, read_rows

    column = manifest.get("config", {}).get("text", {}).get("text_column", "text")
    return {i: cell_bytes(row.get(column)) or b"" for i, row in read_rows(location, (column,))}


def serving_cost(model, spec, inputs: list[bytes], batch_size: int, dtype=None) -> dict[str, Any]:
    """What the server pays per request: decode ms (once), and per level compression ms and forward ms per
    sample at ``batch_size``, with the server's own functions on the model's device.

    Medians over ``inputs`` for decode and compression; levels are compressed most compressed first,
    in the order the cascade tries them (a video decodes frames on demand).
    """
    from icpc.inference.predict import classify
    from icpc.pipeline.modalities import get_modality

    modality = get_modality(spec.modality)
    levels = len(spec.ladder)
    decode_s, compress_s = [], [[] for _ in range(levels)]
    items: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(levels)]
    for data in inputs:
        t0 = time.perf_counter()
        decoded = modality.decode(data, spec)
        decode_s.append(time.perf_counter() - t0)
        for level in cascade_order(levels):
            t0 = time.perf_counter()
            items[level].append(modality.compress(decoded, spec, [level]).levels[0])
            compress_s[level].append(time.perf_counter() - t0)
    forward_ms = []
    for level in range(levels):
        classify(model, spec, level, items[level][:batch_size], dtype)  # warm-up of this shape
        t0 = time.perf_counter()
        for i in range(0, len(items[level]), batch_size):
            classify(model, spec, level, items[level][i:i + batch_size], dtype)  # .cpu() waits for the GPU
        forward_ms.append(1000 * (time.perf_counter() - t0) / len(items[level]))
    return {"samples": len(inputs), "batch_size": batch_size, "decode_ms": 1000 * float(np.median(decode_s)),
            "compress_ms": [1000 * float(np.median(c)) for c in compress_s], "forward_ms": forward_ms}


def calibrate(cfg: CalibrateConfig, progress: bool = True) -> dict[str, Any]:
    """Measure per-level probabilities and cost, search, write thresholds.json and calibrate.png."""
    import torch

    from icpc.config import EvalConfig, to_dict
    from icpc.contract import Spec, check_spec
    from icpc.dataset import read_manifest, split_shards
    from icpc.devices import autocast_dtype, resolve_device
    from icpc.inference.evaluate import predict_level
    from icpc.modelio import load_model

    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(device, cfg.precision)
    model, spec, state = load_model(cfg.checkpoint, device=device)
    data = cfg.data or state["data"]
    manifest = read_manifest(data)
    check_spec(spec, Spec.from_json(manifest["spec"]), f"calibrate {cfg.checkpoint} on {data}")
    ecfg = EvalConfig(batch_size=cfg.batch_size, limit=cfg.limit)

    def level_probs(split: str) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
        """(probs (levels, n, C), labels (n,), forward ms per sample, mean tokens per sample) per level.

        Mean tokens are counted per sample (text levels have no fixed count; the ladder holds maxima).
        """
        shards = split_shards(manifest, data, split)
        runs = [predict_level(model, shards, spec, lv, ecfg, model.strategy, dtype) for lv in range(len(spec.ladder))]
        if any(r["keys"] != runs[0]["keys"] for r in runs):
            raise RuntimeError(f"levels disagree on the {split} sample set; the shards are inconsistent")
        ms = [1000 * r["seconds"] / len(r["labels"]) for r in runs]
        return np.stack([r["probs"] for r in runs]), runs[0]["labels"], ms, [float(r["tokens"].mean()) for r in runs]

    # Batched ms over the whole split, not batch-1 latency: the server batches, and on a shared CPU
    # a few hundred batch-1 timings are too noisy to rank levels by.
    probs, labels, ms, tokens = level_probs(cfg.split)
    serving = None
    if cfg.cost == "serving":
        # Timed as one model replica runs: serve_threads torch threads, the serving batch, raw inputs.
        torch.set_num_threads(cfg.serve_threads)
        inputs = [x["data"] for x in raw_inputs(data, cfg.split, cfg.cost_samples)]
        serving = serving_cost(model, spec, inputs, cfg.serve_batch, dtype)
        serving["level_overhead_ms"] = cfg.level_overhead_ms
        torch.set_num_threads(threads)
        level_cost = [c + f + cfg.level_overhead_ms for c, f in zip(serving["compress_ms"], serving["forward_ms"])]
    else:
        level_cost = ms if cfg.cost == "ms" else tokens
    found = search_thresholds(probs, labels, level_cost, cfg.tolerance, cfg.grid)
    ref_cost = level_cost[0]
    levels = [{"level": i, "name": lv.name, "tokens": tokens[i], "cost": level_cost[i], "ms_per_sample": ms[i],
               "accuracy": float((probs[i].argmax(1) == labels).mean())} for i, lv in enumerate(spec.ladder)]
    if serving:
        for lv in levels:
            lv.update(compress_ms=serving["compress_ms"][lv["level"]], forward_ms=serving["forward_ms"][lv["level"]])
    chosen = {k: v for k, v in found.items() if k != "shared"}
    report: dict[str, Any] = {
        "thresholds": chosen["thresholds"], "order": chosen["order"],
        "target": f"{cfg.split} accuracy >= level 0's - {cfg.tolerance}", "cost": cfg.cost,
        "level_cost": level_cost, "levels": levels, "samples": int(len(labels)),
        "device": device, "precision": str(dtype or torch.float32).removeprefix("torch."), "serving": serving,
        "checkpoint": str(cfg.checkpoint), "data": str(data), "split": cfg.split,
        cfg.split: _summary(chosen, ref_cost, probs, labels, tokens),
        "shared": [{**s, "cost_ratio": s["mean_cost"] / ref_cost} for s in found["shared"]],
        "config": to_dict(cfg),
    }
    if cfg.check_split and cfg.check_split != cfg.split and manifest["counts"].get(cfg.check_split):
        cprobs, clabels, _, _ = level_probs(cfg.check_split)
        check = evaluate_thresholds(cprobs, clabels, chosen["thresholds"], level_cost)
        check["reference_accuracy"] = float((cprobs[0].argmax(1) == clabels).mean())
        report[cfg.check_split] = _summary(check, ref_cost, cprobs, clabels, tokens)
    out = cfg.output or storage.parent(cfg.checkpoint)
    storage.makedirs(out)
    write_json(storage.join(out, THRESHOLDS_FILE), report)
    plot(report, storage.join(out, PLOT_FILE))
    report["output"] = out
    return report


def _summary(point: dict[str, Any], ref_cost: float, probs: np.ndarray, labels: np.ndarray,
             tokens: list[float]) -> dict[str, Any]:
    token_cost = evaluate_thresholds(probs, labels, point["thresholds"], tokens)["mean_cost"]
    return {"samples": int(len(labels)), "accuracy": point["accuracy"],
            "reference_accuracy": point["reference_accuracy"],
            "accuracy_delta": point["accuracy"] - point["reference_accuracy"],
            "mean_cost": point["mean_cost"], "cost_ratio": point["mean_cost"] / ref_cost,
            "token_ratio": token_cost / tokens[0], "mean_levels_tried": point["mean_levels_tried"],
            "answered": point["answered"]}


def plot(report: dict[str, Any], location: str) -> None:
    """Accuracy against cost relative to level 0: single levels, the shared sweep, the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, levels, ref = report["split"], report["levels"], report["levels"][0]["cost"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([lv["cost"] / ref for lv in levels], [lv["accuracy"] for lv in levels], "o", label="single level")
    for lv in levels:
        ax.annotate(f"L{lv['level']}", (lv["cost"] / ref, lv["accuracy"]), textcoords="offset points", xytext=(4, 4))
    ax.plot([s["cost_ratio"] for s in report["shared"]], [s["accuracy"] for s in report["shared"]], ".",
            alpha=0.6, label="cascade, one shared threshold")
    chosen = report[split]
    ax.plot([chosen["cost_ratio"]], [chosen["accuracy"]], "r*", ms=14, label="calibrated (per level)")
    ax.axhline(chosen["reference_accuracy"] - report["config"]["tolerance"], color="grey", ls=":", label="target")
    ax.set_xlabel(f"mean cost ({report['cost']}) relative to level 0")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(f"cascade calibration ({report['samples']} {split} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, location)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{'level':<12}{'tokens':>7}{r['cost']:>9}{'accuracy':>10}"]
    for lv in r["levels"]:
        lines.append(f"L{lv['level']} {lv['name']:<9}{lv['tokens']:>7}{lv['cost']:>9.3f}{lv['accuracy']:>10.4f}")
    lines.append(f"thresholds {r['thresholds']} (order {r['order']}; > 1 = level skipped)")
    if r.get("serving"):
        sv = r["serving"]
        lines.append(f"serving cost on {r['device']} ({r['precision']}): decode {sv['decode_ms']:.3f} ms once, then per "
                     f"level compress + forward (batch {sv['batch_size']}) + {sv['level_overhead_ms']} ms overhead")
    for split in ("val", "test", "train"):
        if split in r:
            s = r[split]
            ms = f"{s['cost_ratio']:.2f}x the {r['cost']} cost, " if r["cost"] != "tokens" else ""
            lines.append(f"{split}: accuracy {s['accuracy']:.4f} ({100 * s['accuracy_delta']:+.2f} pts vs L0) at "
                         f"{ms}{s['token_ratio']:.2f}x the tokens of L0 ({s['samples']} samples)")
    lines.append(f"wrote {r['output']}/{{{THRESHOLDS_FILE}, {PLOT_FILE}}}")
    return "\n".join(lines)
