"""``icpc calibrate``: per-level cascade thresholds whose loss against level 0 is certified (Learn then Test).

    icpc calibrate --checkpoint runs/icpc/last.pt                          # epsilon 0.01, delta 0.1, val split
    icpc calibrate --checkpoint runs/icpc/last.pt --epsilon 0.02 --cost tokens
    icpc calibrate --checkpoint runs/icpc/last.pt --set loss=disagreement  # labels not used

Guarantee (``ltt.py``): if the calibration split and the traffic served later are exchangeable,
then with probability at least ``1 - delta`` over the calibration samples the chosen cascade loses
at most ``epsilon`` accuracy against level 0 (``loss=accuracy``: level 0 right and the cascade
wrong), or answers differently from level 0 on at most ``epsilon`` of the inputs
(``loss=disagreement``). The math is pure numpy in ``ltt.py``; this module measures the
probabilities and the per-level costs, runs it, and writes ``thresholds.json`` and ``calibrate.png``.

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
from typing import Any

import numpy as np

from icpc import storage
from icpc.inference.cascade import cascade_order
from icpc.inference.cascade_report import cascade_figures, format_figures
from icpc.inference.ltt import DEFAULT_GRID, LOSSES, PATHS, learn_then_test
from icpc.inference.thresholds import THRESHOLDS_FILE, active_order
from icpc.reports import save_figure, write_json

PLOT_FILE = "calibrate.png"
COSTS = ("serving", "ms", "tokens")


@dataclass
class CalibrateConfig:
    """``icpc calibrate``: certify thresholds on held-out data, write them beside the checkpoint."""

    checkpoint: str = "runs/train/last.pt"
    data: str = ""                    # dataset folder; "" = the one the checkpoint was trained on
    split: str = "val"                # held-out split the thresholds are certified on (exchangeable with traffic)
    check_split: str = "test"         # split the chosen thresholds are then reported on ("" = none)
    epsilon: float = 0.01             # loss the cascade may have against level 0 (0.01 = 1 accuracy point)
    delta: float = 0.1                # chance, over the calibration samples, that the guarantee fails
    # "accuracy": level 0 right and the cascade wrong (needs labels); "disagreement": the cascade's label
    # differs from level 0's (no labels needed; bounds the accuracy loss too, so it certifies less)
    loss: str = "accuracy"
    # fixed candidate paths, each tested from its most conservative point, delta split between them:
    # "shared" (one threshold for every compressed level), "direct" (most compressed level, then level 0)
    paths: list[str] = field(default_factory=lambda: ["shared", "direct"])
    grid: list[float] = field(default_factory=lambda: DEFAULT_GRID.copy())  # thresholds along each path, any order
    cost: str = "serving"             # per-level cost: "serving" (ms the server pays per level tried, see the
                                      # module doc), "ms" (forward ms per sample at batch_size) or "tokens"
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
        if not 0 < self.epsilon < 1:
            errors.append(f"epsilon={self.epsilon}: must be in (0, 1) (0.01 = 1 accuracy point)")
        if not 0 < self.delta < 1:
            errors.append(f"delta={self.delta}: must be in (0, 1) (0.1 = the guarantee holds 9 times in 10)")
        if self.loss not in LOSSES:
            errors.append(f"loss={self.loss!r}: choose one of {LOSSES}")
        if not self.paths or any(p not in PATHS for p in self.paths) or len(set(self.paths)) != len(self.paths):
            errors.append(f"paths={self.paths}: choose one or more of {PATHS}, each once")
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

    def level_probs(split: str) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
        """(probs (levels, n, C), labels (n,), forward ms per sample per level, tokens (levels, n)).

        Tokens are counted per sample (text levels have no fixed count; the ladder holds maxima).
        """
        shards = split_shards(manifest, data, split)
        runs = [predict_level(model, shards, spec, lv, ecfg, model.strategy, dtype) for lv in range(len(spec.ladder))]
        if any(r["keys"] != runs[0]["keys"] for r in runs):
            raise RuntimeError(f"levels disagree on the {split} sample set; the shards are inconsistent")
        ms = [1000 * r["seconds"] / len(r["labels"]) for r in runs]
        return np.stack([r["probs"] for r in runs]), runs[0]["labels"], ms, np.stack([r["tokens"] for r in runs])

    # Batched ms over the whole split, not batch-1 latency: the server batches, and on a shared CPU
    # a few hundred batch-1 timings are too noisy to rank levels by.
    probs, labels, ms, sample_tokens = level_probs(cfg.split)
    tokens = [float(t) for t in sample_tokens.mean(1)]
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
    found = learn_then_test(probs, labels if cfg.loss == "accuracy" else None, level_cost, cfg.epsilon, cfg.delta,
                            cfg.loss, cfg.paths, cfg.grid)
    levels = [{"level": i, "name": lv.name, "tokens": tokens[i], "cost": level_cost[i], "ms_per_sample": ms[i],
               "accuracy": float((probs[i].argmax(1) == labels).mean())} for i, lv in enumerate(spec.ladder)]
    if serving:
        for lv in levels:
            lv.update(compress_ms=serving["compress_ms"][lv["level"]], forward_ms=serving["forward_ms"][lv["level"]])
    chosen = found["thresholds"]
    report: dict[str, Any] = {
        "thresholds": chosen, **_certificate(found, cfg.split),
        "cost": cfg.cost, "level_cost": level_cost, "levels": levels, "samples": found["n"],
        "device": device, "precision": str(dtype or torch.float32).removeprefix("torch."), "serving": serving,
        "checkpoint": str(cfg.checkpoint), "data": str(data), "split": cfg.split,
        cfg.split: cascade_figures(probs, labels, chosen, sample_tokens, level_cost),
        "tested": found["tested"], "config": to_dict(cfg),
    }
    report["expected_cost"] = {k: report[cfg.split][k] for k in ("token_ratio", "cost_ratio", "mean_levels_tried")}
    if cfg.check_split and cfg.check_split != cfg.split and manifest["counts"].get(cfg.check_split):
        cprobs, clabels, _, ctokens = level_probs(cfg.check_split)
        report[cfg.check_split] = cascade_figures(cprobs, clabels, chosen, ctokens, level_cost)
    out = cfg.output or storage.parent(cfg.checkpoint)
    storage.makedirs(out)
    write_json(storage.join(out, THRESHOLDS_FILE), report)
    plot(report, storage.join(out, PLOT_FILE))
    report["output"] = out
    return report


def _certificate(found: dict[str, Any], split: str) -> dict[str, Any]:
    """What ``learn_then_test`` certified, in the words and fields thresholds.json records."""
    what = {"accuracy": "accuracy lost against level 0 (level 0 right, the cascade wrong)",
            "disagreement": "share of inputs answered differently from level 0"}[found["loss"]]
    if found["certified"]:
        statement = (f"with probability >= {1 - found['delta']:g} over the {found['n']} {split} samples, the "
                     f"{what} is at most {found['epsilon']:g} on data exchangeable with them")
    elif found["n"] < found["samples_needed"]:
        statement = (f"the {split} split is too small to certify any saving: {found['n']} samples certify at best a "
                     f"loss of {found['smallest_certifiable']:.4f} (zero losses), epsilon {found['epsilon']:g} needs "
                     f"at least {found['samples_needed']}; the cascade answers at level 0 (raise epsilon or "
                     f"calibrate on more held-out samples)")
    elif found["certified_count"]:
        statement = (f"no saving certified: the {found['certified_count']} candidates certified at epsilon "
                     f"{found['epsilon']:g} all cost more than level 0 alone; the cascade answers at level 0")
    else:
        statement = (f"no saving certified: the first candidate of every path already loses too often on the "
                     f"{found['n']} {split} samples to be certified at epsilon {found['epsilon']:g}; the cascade "
                     f"answers at level 0")
    return {"certified": found["certified"], "guarantee": statement, "epsilon": found["epsilon"],
            "delta": found["delta"], "loss": found["loss"], "n": found["n"], "paths": found["paths"],
            "candidate": {k: found[k] for k in ("path", "thresholds", "losses", "loss_rate", "p_value")},
            "order": active_order(found["thresholds"])}


def plot(report: dict[str, Any], location: str) -> None:
    """Calibration split: loss and cost relative to level 0 of every candidate tested, certified or not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, eps = report["split"], report["epsilon"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for path in report["paths"]:
        pts = [t for t in report["tested"] if t["path"] == path]
        ax.plot([t["cost_ratio"] for t in pts], [t["loss_rate"] for t in pts], ".-", alpha=0.6,
                label=f"path {path} (tested in order)")
        ok = [t for t in pts if t["certified"]]
        ax.plot([t["cost_ratio"] for t in ok], [t["loss_rate"] for t in ok], "go", ms=4,
                label="certified" if path == report["paths"][0] else None)
    chosen = report[split]
    ax.plot([chosen["cost_ratio"]], [chosen["lost" if report["loss"] == "accuracy" else "disagreement"]], "r*",
            ms=14, label="chosen (thresholds.json)")
    ax.axhline(eps, color="grey", ls=":", label=f"epsilon {eps:g}")
    ax.set_xlabel(f"mean cost ({report['cost']}) relative to level 0")
    ax.set_ylabel(f"{report['loss']} loss on {split} (empirical)")
    ax.set_title(f"Learn then Test, delta {report['delta']:g} ({report['n']} {split} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, location)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{'level':<12}{'tokens':>7}{r['cost']:>9}{'accuracy':>10}"]
    for lv in r["levels"]:
        lines.append(f"L{lv['level']} {lv['name']:<9}{lv['tokens']:>7.4g}{lv['cost']:>9.3f}{lv['accuracy']:>10.4f}")
    if r.get("serving"):
        sv = r["serving"]
        lines.append(f"serving cost on {r['device']} ({r['precision']}): decode {sv['decode_ms']:.3f} ms once, then per "
                     f"level compress + forward (batch {sv['batch_size']}) + {sv['level_overhead_ms']} ms overhead")
    c = r["candidate"]
    tested = len(r["tested"])
    lines.append(f"Learn then Test: loss {r['loss']}, epsilon {r['epsilon']:g}, delta {r['delta']:g}, paths "
                 f"{r['paths']}, {tested} candidates tested on {r['n']} {r['split']} samples")
    if r["certified"]:
        lines.append(f"certified: {r['guarantee']}")
        lines.append(f"chosen: {c['path']} {c['thresholds']} ({c['losses']} losses, p = {c['p_value']:.3g}); "
                     f"expected cost {r['expected_cost']['token_ratio']:.2f}x the tokens of level 0, "
                     f"{r['expected_cost']['cost_ratio']:.2f}x its {r['cost']} cost")
    else:
        lines.append(f"NOT CERTIFIED: {r['guarantee']}")
    lines.append(f"thresholds {r['thresholds']} (order {r['order']}; > 1 = level skipped)")
    for split in ("val", "test", "train"):
        if split in r:
            lines.append(format_figures(split, r[split], r["cost"] if r["cost"] != "tokens" else ""))
    lines.append(f"wrote {r['output']}/{{{THRESHOLDS_FILE}, {PLOT_FILE}}}")
    return "\n".join(lines)
