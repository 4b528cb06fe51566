"""``icpc compress`` as a Ray job: one Ray task per shard compresses its samples and writes the shard.

Runs embedded (``ray.init()`` on this machine) by default, against a cluster with ``--address``,
and unchanged under ``ray job submit`` (which sets RAY_ADDRESS). Which shard a sample goes to
is a pure function of the input listing (the scan's seeded order, cut into ``shard_samples``
runs per split), so a re-run writes byte-identical shards. Each task reads its inputs and writes
its shard through the storage layer (a path or an object-store URL); the driver receives only
shard metadata and index rows, and writes the index, the rejects table and, last, the manifest.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from icpc import storage
from icpc.config import to_dict
from icpc.contract import SPLITS, Spec
from icpc.dataset import INDEX_FILE, MANIFEST_FILE, REJECTS_FILE
from icpc.pipeline.config import CompressConfig
from icpc.pipeline.modalities import get_modality, plugin_env
from icpc.pipeline.writer import (REJECTS_SCHEMA, ShardBuilder, ShardInfo, index_schema, meta_types, write_manifest,
                                  write_parquet)
from icpc.progress import Progress

# Fraction of a CPU each shard task reserves: Ray then runs two per core, so a task that waits on
# storage does not leave a core idle.
TASK_CPUS = 0.5


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


def shard_plan(records: list[dict[str, Any]], shard_samples: int) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(shard name, split, records) of every shard: each split's records in listing order, cut into runs."""
    plan = []
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        for i in range(0, len(rows), shard_samples):
            plan.append((f"{split}-{i // shard_samples:06d}.tar", split, rows[i:i + shard_samples]))
    return plan


def build_shard(records: list[dict[str, Any]], spec_json: dict[str, Any], location: str, name: str, split: str,
                max_input_bytes: int) -> tuple[ShardInfo | None, list[dict[str, str]]]:
    """Read, decode and compress every record, write the shard to ``location``; (shard info, rejects).

    A sample that cannot be read or compressed becomes a reject (key, source, stage, reason) and
    the shard goes on without it; a shard whose every sample was rejected is not written (None).
    """
    spec = Spec.from_json(spec_json)
    modality = get_modality(spec.modality)
    builder, rejects = ShardBuilder(spec, modality.shared_positions), []
    for rec in records:
        stage = "read"
        try:
            data = rec["payload"] if rec.get("payload") is not None else storage.read_bytes(rec["source"],
                                                                                          max_input_bytes)
            stage = "compress"
            out = modality.compress_bytes(data, spec)
            builder.add(rec, out.levels, out.meta)
        except Exception as exc:  # noqa: BLE001 - any failure of one sample is recorded, the job goes on
            rejects.append({"key": rec["key"], "source": rec["source"], "stage": stage,
                            "error": f"{type(exc).__name__}: {exc}"})
    if not len(builder):
        return None, rejects
    return builder.write(location, name, split), rejects


class ShardActor:
    """``build_shard`` in a long-lived Ray actor: what the compressor caches per process (a teacher
    model) is loaded once per actor and kept for every shard it builds."""

    def build(self, *args: Any) -> tuple[ShardInfo | None, list[dict[str, str]]]:
        return build_shard(*args)


def run_compress(cfg: CompressConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also printed by the CLI)."""
    import ray

    started = time.perf_counter()
    modality = get_modality(cfg.modality)
    _check_output(cfg.output, cfg.overwrite)
    records, rejects, classes = modality.scan(cfg)
    reject_rows = [dataclasses.asdict(r) for r in rejects]
    if not records:
        raise ValueError(f"input {cfg.input!r} holds no readable samples ({len(rejects)} rejected at scan)")

    # only now, with something to write, touch the output: a bad --input never costs an old dataset
    out = _prepare_output(cfg.output, cfg.overwrite)
    init_ray(cfg.address, cfg.num_cpus)
    if modality.prepare is not None:
        spec = modality.prepare(cfg.settings, [r for r in records if r.split == "train"], out)
    else:
        spec = modality.build_spec(cfg.settings)
    plan = shard_plan([dataclasses.asdict(r) for r in records], cfg.shard_samples)
    # a plugin modality named in ICPC_MODALITIES must be importable in the workers too
    options: dict[str, Any] = {"num_cpus": TASK_CPUS}
    if plugin_env():
        options["runtime_env"] = {"env_vars": plugin_env()}
    spec_ref = ray.put(spec.to_json())
    if modality.needs_actors(cfg.settings):  # e.g. text's teacher model, loaded once per actor
        actors = [ray.remote(ShardActor).options(**options).remote()
                  for _ in range(max(1, int(ray.available_resources().get("CPU", 1))))]  # one model copy per core
        refs = [actors[i % len(actors)].build.remote(recs, spec_ref, storage.join(out, name), name, split,
                                                     cfg.max_input_bytes)
                for i, (name, split, recs) in enumerate(plan)]
    else:
        task = ray.remote(build_shard).options(**options)
        refs = [task.remote(recs, spec_ref, storage.join(out, name), name, split, cfg.max_input_bytes)
                for name, split, recs in plan]

    shards: list[ShardInfo] = []
    writer, schema = None, None
    index_buf = pa.BufferOutputStream()
    bar = Progress(len(records), f"compress {cfg.modality}", unit="sample", enabled=progress)
    for ref, (_, _, recs) in zip(refs, plan):  # in plan order: the index lists shards in order
        info, shard_rejects = ray.get(ref)
        reject_rows += shard_rejects
        bar.update(len(recs))
        if info is None:
            continue
        shards.append(info)
        if writer is None:
            schema = index_schema(len(spec.ladder), meta_types(info.rows))
            writer = pq.ParquetWriter(index_buf, schema)
        writer.write_table(pa.Table.from_pylist(info.rows, schema=schema))
    bar.close()
    writer.close()
    storage.write_bytes(storage.join(out, INDEX_FILE), index_buf.getvalue().to_pybytes())
    counts = {s: sum(sh.samples for sh in shards if sh.split == s) for s in SPLITS}
    write_parquet(reject_rows, storage.join(out, REJECTS_FILE), REJECTS_SCHEMA)
    write_manifest(out, spec, cfg.seed, to_dict(cfg), classes, shards, counts)
    elapsed = time.perf_counter() - started
    samples = sum(counts.values())
    return summarise(out, spec, shards, samples, len(reject_rows), counts, elapsed)


def summarise(out: str, spec: Spec, shards: list[ShardInfo], samples: int, rejects: int, counts: dict[str, int],
              elapsed: float) -> dict[str, Any]:
    rows = [r for s in shards for r in s.rows]
    return {
        "output": out,
        "samples": samples,
        "rejects": rejects,
        "counts": counts,
        "shards": len(shards),
        "bytes": sum(s.bytes for s in shards),
        "seconds": elapsed,
        "samples_per_s": (samples + rejects) / elapsed,
        "ladder": [lv.name for lv in spec.ladder],
        "tokens": [lv.tokens for lv in spec.ladder],
        # per-sample counts (text: the ladder's tokens are maxima) and truncations, where reported
        "mean_tokens": [round(sum(r[f"tokens_l{i}"] for r in rows) / max(1, len(rows)), 1)
                        for i in range(len(spec.ladder))],
        "truncated": sum(bool(r["truncated"]) for r in rows) if any("truncated" in r for r in rows) else None,
    }


def _check_output(out: str, overwrite: bool) -> None:
    """Refuse, before any work, to write over an earlier dataset unless ``overwrite``."""
    if not overwrite and (storage.exists(storage.join(out, MANIFEST_FILE)) or storage.glob(out, "*.tar")):
        raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it "
                              f"or choose another --output")


def _prepare_output(out: str, overwrite: bool) -> str:
    """Create ``out``; clear an earlier dataset (``_check_output`` allowed it); drop stale temp files."""
    _check_output(out, overwrite)
    for p in [*storage.glob(out, "*.tar"), *(storage.join(out, f) for f in (INDEX_FILE, REJECTS_FILE, MANIFEST_FILE))]:
        storage.remove(p)
    storage.makedirs(out)
    for stale in storage.glob(out, ".*.tmp*"):
        storage.remove(stale)
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
