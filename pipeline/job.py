"""``icpc compress`` as a Ray job: Ray Data compresses every sample at every level; the driver streams shards.

Runs embedded (``ray.init()`` on this machine) by default, against a cluster with ``--address``,
and unchanged under ``ray job submit`` (which sets RAY_ADDRESS). Raw files must be readable at
the same path from every worker node (a shared file system on a real cluster).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from icpc import storage
from icpc.config import to_dict
from icpc.contract import META_MEMBER, SPLITS, Spec, encode_sample
from icpc.dataset import INDEX_FILE, MANIFEST_FILE, REJECTS_FILE
from icpc.pipeline.config import CompressConfig
from icpc.pipeline.modalities import get_modality, plugin_env
from icpc.pipeline.writer import REJECTS_SCHEMA, ShardWriter, write_manifest, write_parquet
from icpc.progress import Progress

# Fraction of a CPU each Ray Data compression task reserves: leaves room for the driver, which
# writes the shards, on a 2-core machine.
TASK_CPUS = 0.5

# One row per input: the record, the failure (if any) and the encoded members (none for a reject).
RESULT_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("split", pa.string()), ("label", pa.int64()),
    ("label_name", pa.string()), ("stage", pa.string()), ("error", pa.string()),
    ("members", pa.list_(pa.struct([("name", pa.string()), ("data", pa.binary())]))),
])


def init_ray(address: str | None, num_cpus: float | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, set by ``ray job submit``), else start an embedded Ray."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always a fresh embedded instance, never a stray cluster found in /tmp/ray.
        # No dashboard, so no unauthenticated job API; Ray 2.60 turns token auth on for the rest
        # unless RAY_AUTH_MODE says otherwise.
        ray.init(address="local", num_cpus=int(num_cpus) if num_cpus else None, include_dashboard=False,
                 log_to_driver=False)


def compress_batch(batch: pa.Table, spec_json: dict[str, Any], max_input_bytes: int) -> pa.Table:
    """Ray Data map_batches function: record rows in, encoded-sample rows (or reject rows) out."""
    spec = Spec.from_json(spec_json)
    modality = get_modality(spec.modality)
    rows = []
    for rec in batch.to_pylist():
        payload = rec.pop("payload", None)
        row = {**rec, "stage": "", "error": "", "members": []}
        try:
            stage = "read"
            data = payload if payload is not None else storage.read_bytes(rec["source"], max_input_bytes)
            stage = "compress"
            out = modality.compress_bytes(data, spec)
            meta = {"key": rec["key"], "source": rec["source"], "split": rec["split"],
                    "label_name": rec["label_name"], "tokens": [len(t) for t, _ in out.levels],
                    **out.meta}  # a compressor may add facts, e.g. text's "truncated"
            sample = encode_sample(rec["key"], rec["label"], out.levels, meta)
            row["members"] = [{"name": k, "data": v} for k, v in sample.items() if k != "__key__"]
        except Exception as exc:  # noqa: BLE001 - any failure of one sample is recorded, the job goes on
            row["stage"], row["error"] = stage, f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


class CompressActor:
    """``compress_batch`` in a Ray Data actor: what the compressor caches per process (a teacher
    model) is loaded once per actor and kept for every batch it compresses."""

    def __init__(self, spec_json: dict[str, Any], max_input_bytes: int):
        self.kwargs = {"spec_json": spec_json, "max_input_bytes": max_input_bytes}

    def __call__(self, batch: pa.Table) -> pa.Table:
        return compress_batch(batch, **self.kwargs)


def run_compress(cfg: CompressConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also printed by the CLI)."""
    import ray

    started = time.perf_counter()
    modality = get_modality(cfg.modality)
    _check_output(Path(cfg.output), cfg.overwrite)
    records, rejects, classes = modality.scan(cfg)
    reject_rows = [dataclasses.asdict(r) for r in rejects]
    if not records:
        raise ValueError(f"input {cfg.input!r} holds no readable samples ({len(rejects)} rejected at scan)")

    # only now, with something to write, touch the output: a bad --input never costs an old dataset
    out = _prepare_output(Path(cfg.output), cfg.overwrite)
    init_ray(cfg.address, cfg.num_cpus)
    if modality.prepare is not None:
        spec = modality.prepare(cfg.settings, [r for r in records if r.split == "train"], str(out))
    else:
        spec = modality.build_spec(cfg.settings)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards are reproducible run to run
    ctx.enable_progress_bars = False               # one bar, the driver's, below
    items = [dataclasses.asdict(r) for r in records]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // cfg.batch_size, 256)))
    kwargs = {"spec_json": spec.to_json(), "max_input_bytes": cfg.max_input_bytes}
    # a plugin modality named in ICPC_MODALITIES must be importable in the workers too
    remote_args = {"runtime_env": {"env_vars": plugin_env()}} if plugin_env() else {}
    if modality.needs_actors(cfg.settings):  # e.g. text's teacher model, loaded once per actor
        actors = max(1, int(ray.available_resources().get("CPU", 1)))  # one model copy per core
        ds = ds.map_batches(CompressActor, fn_constructor_kwargs=kwargs, concurrency=actors,
                            batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=TASK_CPUS, **remote_args)
    else:
        ds = ds.map_batches(compress_batch, fn_kwargs=kwargs,
                            batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=TASK_CPUS, **remote_args)

    writers = {s: ShardWriter(out, s, cfg.shard_samples) for s in SPLITS}
    index_rows: list[dict[str, Any]] = []
    bar = Progress(len(items), f"compress {cfg.modality}", unit="sample", enabled=progress)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            bar.update()
            if row["error"]:
                reject_rows.append({k: row[k] for k in ("key", "source", "stage", "error")})
                continue
            sample = {"__key__": row["key"], **{m["name"]: m["data"] for m in row["members"]}}
            shard = writers[row["split"]].write(sample)
            index_rows.append(_index_row(row, sample, shard))
    bar.close()

    shards = [s for w in writers.values() for s in w.close()]
    counts = {s: sum(sh["samples"] for sh in shards if sh["split"] == s) for s in SPLITS}
    write_parquet(index_rows, out / INDEX_FILE)
    write_parquet(reject_rows, out / REJECTS_FILE, REJECTS_SCHEMA)
    write_manifest(out, spec, cfg.seed, to_dict(cfg), classes, shards, counts)
    elapsed = time.perf_counter() - started
    return {
        "output": str(out),
        "samples": len(index_rows),
        "rejects": len(reject_rows),
        "counts": counts,
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "seconds": elapsed,
        "samples_per_s": (len(index_rows) + len(reject_rows)) / elapsed,
        "ladder": [lv.name for lv in spec.ladder],
        "tokens": [lv.tokens for lv in spec.ladder],
        # per-sample counts (text: the ladder's tokens are maxima) and truncations, where reported
        "mean_tokens": [round(sum(r[f"tokens_l{i}"] for r in index_rows) / max(1, len(index_rows)), 1)
                        for i in range(len(spec.ladder))],
        "truncated": (sum(r["truncated"] for r in index_rows)
                      if any("truncated" in r for r in index_rows) else None),
    }


def _index_row(row: dict[str, Any], sample: dict[str, bytes], shard: str) -> dict[str, Any]:
    out = {"key": row["key"], "shard": shard, "split": row["split"], "label": row["label"],
           "label_name": row["label_name"], "source": row["source"]}
    meta = json.loads(sample[META_MEMBER])
    for i, n in enumerate(meta["tokens"]):
        out[f"tokens_l{i}"] = n
    if "truncated" in meta:  # text: cut to the model's maximum length before compression
        out["truncated"] = bool(meta["truncated"])
    out["bytes"] = sum(len(v) for k, v in sample.items() if k != "__key__")
    return out


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to write over an earlier dataset unless ``overwrite``."""
    if not overwrite and ((out / MANIFEST_FILE).exists() or any(out.glob("*.tar"))):
        raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it "
                              f"or choose another --output")


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """Create ``out``; clear an earlier dataset (``_check_output`` allowed it); drop stale temp files."""
    _check_output(out, overwrite)
    for p in [*out.glob("*.tar"), out / INDEX_FILE, out / REJECTS_FILE, out / MANIFEST_FILE]:
        p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    return out


def format_summary(s: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
    return "\n".join([
        f"compressed {s['samples']} samples ({counts}); {s['rejects']} rejected (see rejects.parquet)",
        f"ladder {s['ladder']} -> tokens {s['tokens']}" + (
            f" (mean per sample {s['mean_tokens']})" if s.get("mean_tokens", s["tokens"]) != s["tokens"] else ""),
        *([f"{s['truncated']} samples truncated to the maximum length before compression"]
          if s.get("truncated") is not None else []),
        f"{s['shards']} shards, {s['bytes'] / 1e6:.1f} MB, in {s['seconds']:.1f} s "
        f"({s['samples_per_s']:.0f} samples/s)",
        f"wrote {s['output']}/{{*.tar, {INDEX_FILE}, {REJECTS_FILE}, {MANIFEST_FILE}}}",
    ])
