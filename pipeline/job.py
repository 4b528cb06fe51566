"""``icpc compress`` as a Ray job: the driver lists the inputs and plans the shards; one Ray task builds each shard.

Runs embedded (``ray.init()`` on this machine) by default, against a cluster with ``--address``,
and unchanged under ``ray job submit`` (which sets RAY_ADDRESS). Which shard a sample goes to is a
pure function of the input listing (the scan's seeded order, cut into ``shard_samples`` runs per
split), so a re-run writes byte-identical shards. Each task reads its inputs and writes its shard
and part file through the storage layer (``build.py``); the driver receives only summaries, keeps
a bounded number of tasks in flight, retries a task that died (then with each sample in a child
process, so a poison input becomes a reject), fails when a stage rejects too many inputs, and at
the end streams the parts into index.parquet and rejects.parquet and writes the manifest last.
Folder layout, resume and overwrite: ``runs.py``.

Why not Ray Data's writers: a shard is a WebDataset tar whose payload offsets, sha256 and index rows must
reach the manifest, its contents must be a fixed slice of the listing (resume, byte-identical
re-runs), a sealed shard must be skipped, and a retry must change how its samples run; Ray Data
cuts blocks itself, retries them unchanged and writes one file per block.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from icpc import storage
from icpc.codecs import plan_levels
from icpc.config import to_dict
from icpc.contract import SPLITS, Spec
from icpc.dataset import INDEX_FILE, MANIFEST_FILE, REJECTS_FILE
from icpc.local_ray import init_local_ray
from icpc.pipeline import runs
from icpc.pipeline.build import ShardActor, ShardTask, run_shard
from icpc.pipeline.config import RUN_FIELDS, CompressConfig
from icpc.pipeline.modalities import get_modality, plugin_env
from icpc.pipeline.scan import LISTING_SCHEMA, RecordView, Reject, order_listing, records_table, shard_plan
from icpc.pipeline.writer import (REJECTS_SCHEMA, ShardInfo, index_schema, meta_types, parquet_stream,
                                  write_manifest, write_parquet, write_wids_indexes)
from icpc.progress import Progress

# Environment a cluster's workers need to reach the same object store as the driver (endpoints and
# regions, not secrets: credentials come from each node's own configuration, e.g. an instance role).
STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
PART_READERS = 8        # part files fetched at once while the index is written (object stores: one GET each)
ACTOR_RESTART_WAIT_S = 600.0  # s a shard waits for a restarting actor (a busy node re-imports the model) before it counts as failed
RESTART_POLL_S = 0.5         # s between offers of a shard to an actor that is restarting


class RejectLimitError(ValueError):
    """A stage rejected more inputs than ``max_reject_fraction`` allows."""


class ShardFailedError(RuntimeError):
    """A shard task failed more often than ``task_retries`` allows."""


# ----------------------------------------------------------------------------- pure functions


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB; Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reject_overflow(counts: dict[str, int], inputs: int, limit: float) -> list[str]:
    """Stages whose rejects exceed ``limit`` of ``inputs`` (already certain, whatever the rest of the job does)."""
    return [s for s, n in sorted(counts.items()) if n > limit * inputs]


def describe_failure(exc: BaseException) -> str:
    """``Type: message`` of a failed task: the task's own exception when it raised, else Ray's (a dead worker)."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps what the task raised
    err = cause if isinstance(cause, BaseException) else exc
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def reject_message(stage: str, count: int, inputs: int, limit: float, examples: Sequence[dict[str, str]]) -> str:
    shown = "\n".join(f"  {e['source']}: {e['error']}" for e in examples)
    return (f"stage {stage!r} rejected {count} of {inputs} inputs ({100 * count / max(1, inputs):.1f}%), over "
            f"max_reject_fraction={limit:g}; for example:\n{shown}\n"
            f"A missing mount, wrong credentials or a wrong --input format look like this. Fix the cause and run "
            f"again with --overwrite (a --resume keeps the shards sealed so far, their rejects included), or raise "
            f"the limit: --max-reject-fraction F")


# ----------------------------------------------------------------------------- Ray


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
        init_local_ray(num_cpus=int(num_cpus) if num_cpus else None, include_dashboard=False, log_to_driver=False)


def task_options(cfg: CompressConfig) -> dict[str, Any]:
    """Ray options of a shard task: its CPUs, no blind Ray retries (the driver retries, isolated), its env."""
    env = dict(plugin_env())  # a plugin modality named in ICPC_MODALITIES must be importable in the workers
    if cfg.address or os.environ.get("RAY_ADDRESS"):  # an embedded Ray's workers inherit the driver's env
        env.update({k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)})
    options: dict[str, Any] = {"num_cpus": cfg.cpus_per_task}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


class Executor:
    """Shard tasks in flight: ``submit(i, task, attempt)``; ``next()`` waits for one: (i, task, attempt, result or error)."""

    def __init__(self, cfg: CompressConfig, actors: bool):
        import ray

        self.ray, self.cfg = ray, cfg
        options = task_options(cfg)
        self.pending: dict[Any, tuple[int, ShardTask, int]] = {}
        self.on_actors: set[Any] = set()   # the pending calls that run on an actor (cannot be force-cancelled)
        if actors:  # e.g. text's teacher model, loaded once per actor; one copy per core
            n = max(1, int(ray.available_resources().get("CPU", 1)))
            actor = ray.remote(ShardActor).options(**options, max_restarts=-1, max_task_retries=0)
            self.actors = [actor.remote() for _ in range(n)]
        else:
            self.actors = []
            self.remote = ray.remote(run_shard).options(**options, max_retries=0)

    def window(self) -> int:
        """Tasks to keep in flight: 2 per CPU slot of the cluster now (it may have grown), at least 8."""
        if self.cfg.max_in_flight:
            return self.cfg.max_in_flight
        cpus = self.ray.cluster_resources().get("CPU", 1)
        return max(8, int(2 * cpus / self.cfg.cpus_per_task))

    def submit(self, i: int, task: ShardTask, attempt: int, spec_ref: Any) -> None:
        if self.actors:  # a retry goes to another actor than the one that failed (the actors hold every CPU)
            ref = self.actors[(i + attempt) % len(self.actors)].build.remote(task, spec_ref)
            self.on_actors.add(ref)
        else:
            ref = self.remote.remote(task, spec_ref)
        self.pending[ref] = (i, task, attempt)

    def next(self) -> tuple[int, ShardTask, int, Any]:
        [ref], _ = self.ray.wait(list(self.pending), num_returns=1)
        i, task, attempt = self.pending.pop(ref)
        self.on_actors.discard(ref)
        try:
            return i, task, attempt, self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the task died (worker, node) or raised
            return i, task, attempt, exc

    def never_ran(self, error: Exception) -> bool:
        """The call was refused because its actor is restarting after a death (Ray ran nothing): not an attempt."""
        return isinstance(error, self.ray.exceptions.ActorUnavailableError) and "restarting" in str(error)

    def cancel(self) -> None:
        for ref in self.pending:
            try:
                self.ray.cancel(ref, force=ref not in self.on_actors)
            except Exception:  # noqa: BLE001 - a task that already ended cannot be cancelled; nothing to do
                pass
        self.pending.clear()
        self.on_actors.clear()


# ----------------------------------------------------------------------------- the job


def run_compress(cfg: CompressConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also printed by the CLI)."""
    t0 = time.perf_counter()
    out = storage.absolute(cfg.output)
    state = runs.inspect_output(out)
    if state.finished_marker:  # the last run wrote its manifest but stopped before cleaning up
        runs.collect_garbage(out, state.manifest["version"], None)
        state = runs.inspect_output(out)
    action = runs.decide(state, cfg.overwrite, cfg.resume, to_dict(cfg), RUN_FIELDS)
    if action == "complete":
        print(f"{out}: the dataset is complete and was built with these settings; nothing to resume", flush=True)
        return summarise_manifest(out, state.manifest, time.perf_counter() - t0)

    modality = get_modality(cfg.modality)
    phases: dict[str, float] = {}
    rss: dict[str, float] = {"before": peak_rss_mb()}   # the driver's peak so far, at the end of each phase
    version, listing, scan_rejects, spec, classes = start_run(cfg, out, state, action, modality, phases, rss)
    plan = shard_plan(listing, cfg.shard_samples)
    if action == "new":  # the marker goes last: a folder with a marker always has a complete run state
        runs.write_marker(out, version, len(plan), listing.num_rows, to_dict(cfg),
                          (state.manifest or {}).get("version"))
    phases["start"] = time.perf_counter() - t0 - phases["scan"]
    rss["start"] = peak_rss_mb()

    t1 = time.perf_counter()
    outcomes, retried = execute(cfg, out, version, listing, plan, spec, len(scan_rejects),
                                {"scan": [asdict(r) for r in scan_rejects[:3]]}, modality.needs_actors(cfg.settings),
                                progress)
    phases["compress"] = time.perf_counter() - t1
    rss["compress"] = peak_rss_mb()

    t2 = time.perf_counter()
    shards, counts, summary = finish(cfg, out, version, spec, classes, plan, outcomes, scan_rejects, state.manifest)
    phases["finalize"] = time.perf_counter() - t2
    elapsed = time.perf_counter() - t0
    samples = sum(counts.values())
    summary.update({
        "output": out, "version": version, "samples": samples, "counts": counts, "shards": len(shards),
        "bytes": sum(s.bytes for s in shards), "seconds": elapsed, "retried_shards": retried,
        "samples_per_s": (samples + summary["rejects"]) / elapsed,
        "compress_samples_per_s": listing.num_rows / max(phases["compress"], 1e-9),
        "phases": {k: round(v, 2) for k, v in phases.items()},
        "driver_peak_rss_mb": peak_rss_mb(), "driver_peak_rss_mb_by_phase": {**rss, "finalize": peak_rss_mb()},
        "ladder": [lv.name for lv in spec.ladder], "tokens": [lv.tokens for lv in spec.ladder],
        "payloads": [e["field"] for e in level_layout(cfg, spec)],
    })
    return summary


def start_run(cfg: CompressConfig, out: str, state: runs.OutputState, action: str, modality,
              phases: dict[str, float], rss: dict[str, float]) -> tuple[str, pa.Table, list[Reject], Spec, list[str]]:
    """(version, ordered listing, scan rejects, spec, classes) of the interrupted run to resume, or of a new run:
    the inputs listed (the scan stage's reject guard checked), Ray started, the spec made, the run state saved."""
    t0 = time.perf_counter()
    if action == "resume":
        version = state.marker["version"]
        listing, scan_rejects, spec, classes = load_run(out, version)
        print(f"resuming run {version} in {out}: {runs.sealed_count(out, version)} of {state.marker['shards']} "
              f"shards sealed", flush=True)
        phases["scan"] = time.perf_counter() - t0
        rss["scan"] = peak_rss_mb()
        init_ray(cfg.address, cfg.num_cpus)
        return version, listing, scan_rejects, spec, classes
    listing, scan_rejects, classes = scan_inputs(modality, cfg)
    phases["scan"] = time.perf_counter() - t0
    rss["scan"] = peak_rss_mb()
    check_rejects({"scan": len(scan_rejects)}, listing.num_rows + len(scan_rejects), cfg.max_reject_fraction,
                  {"scan": [asdict(r) for r in scan_rejects[:3]]})
    if not listing.num_rows:
        raise ValueError(f"input {cfg.input!r} holds no readable samples ({len(scan_rejects)} rejected at scan)")
    # only now, with something to write, touch the output: a bad --input never costs an old dataset
    runs.discard_run(out, state.marker, keep=(state.manifest or {}).get("version"))
    version = runs.new_version()
    storage.makedirs(storage.join(out, version))
    init_ray(cfg.address, cfg.num_cpus)
    if modality.prepare is not None:  # e.g. text's corpus pass (vocabulary, IDF); its copies go beside the shards
        spec = modality.prepare(cfg.settings, RecordView(_split_rows(listing, "train")), storage.join(out, version))
    else:
        spec = modality.build_spec(cfg.settings)
    save_run(out, version, listing, scan_rejects, spec, classes)
    return version, listing, scan_rejects, spec, classes


def scan_inputs(modality, cfg: CompressConfig) -> tuple[pa.Table, list[Reject], list[str]]:
    """The modality's scan as an ordered listing table (a plugin may return a list of Records)."""
    listing, rejects, classes = modality.scan(cfg)
    if not isinstance(listing, pa.Table):
        listing = order_listing(records_table(listing), cfg.seed)
    return listing, list(rejects), classes


def _split_rows(listing: pa.Table, split: str) -> pa.Table:
    import pyarrow.compute as pc

    return listing.filter(pc.equal(listing.column("split"), split))


def level_layout(cfg: CompressConfig, spec: Spec) -> list[dict[str, Any]]:
    """The codec of every level (the manifest's ``layout.levels``) from the config."""
    modality = get_modality(cfg.modality)
    return plan_levels(spec, modality.shared_positions, cfg.codecs, cfg.codec_quality, cfg.lossy_min_side,
                       cfg.level0_as_input and modality.level0_as_input is not None)


def spec_digest(spec_json: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec_json, sort_keys=True).encode()).hexdigest()


def save_run(out: str, version: str, listing: pa.Table, scan_rejects: list[Reject], spec: Spec,
             classes: list[str]) -> None:
    """The run's state under ``VERSION/_run/``: what a resumed run needs to cut the same shards."""
    folder = runs.run_dir(out, version)
    with storage.atomic_write(storage.join(folder, runs.LISTING_FILE)) as f:
        pq.write_table(listing, f)
    write_parquet([asdict(r) for r in scan_rejects], storage.join(folder, runs.SCAN_REJECTS_FILE), REJECTS_SCHEMA)
    storage.write_text(storage.join(folder, runs.SPEC_FILE), json.dumps({"spec": spec.to_json(), "classes": classes}))


def load_run(out: str, version: str) -> tuple[pa.Table, list[Reject], Spec, list[str]]:
    """What ``save_run`` saved: (listing, scan rejects, spec, classes)."""
    folder = runs.run_dir(out, version)
    try:
        with storage.arrow_file(storage.join(folder, runs.LISTING_FILE)) as f:
            listing = pq.read_table(f).cast(LISTING_SCHEMA)
        with storage.arrow_file(storage.join(folder, runs.SCAN_REJECTS_FILE)) as f:
            rejects = [Reject(**r) for r in pq.read_table(f).to_pylist()]
        saved = json.loads(storage.read_text(storage.join(folder, runs.SPEC_FILE)))
    except FileNotFoundError as exc:
        raise FileExistsError(f"the interrupted run {version} in {out} lacks its state ({exc}); "
                              f"pass --overwrite to start over") from None
    return listing, rejects, Spec.from_json(saved["spec"]), saved["classes"]


def check_rejects(counts: dict[str, int], inputs: int, limit: float, examples: dict[str, list[dict[str, str]]]) -> None:
    over = reject_overflow(counts, inputs, limit)
    if over:
        stage = over[0]
        raise RejectLimitError(reject_message(stage, counts[stage], inputs, limit, examples.get(stage, [])))


def execute(cfg: CompressConfig, out: str, version: str, listing: pa.Table, plan: list[tuple[str, str, int, int]],
            spec: Spec, scan_rejected: int, examples: dict[str, list[dict[str, str]]], actors: bool,
            progress: bool) -> tuple[list[dict[str, Any]], int]:
    """Run every shard of ``plan``: (their summaries in plan order, shards retried). Fails (tasks cancelled,
    the run left resumable) when a stage's rejects pass the limit or a shard fails more than ``task_retries`` times."""
    import ray

    spec_json = spec.to_json()
    levels = level_layout(cfg, spec)
    spec_sha, spec_ref = spec_digest({**spec_json, "layout_levels": levels}), ray.put(spec_json)
    ex = Executor(cfg, actors)
    queue = collections.deque((i, 0) for i in range(len(plan)))
    outcomes: list[dict[str, Any]] = [{}] * len(plan)
    counts = {"scan": scan_rejected}
    inputs = listing.num_rows + scan_rejected
    reused = retried = 0
    restarting: dict[int, float] = {}   # shard -> when its call was first refused by a restarting actor
    bar = Progress(listing.num_rows, f"compress {cfg.modality}", unit="sample", enabled=progress)

    def task(i: int, attempt: int) -> ShardTask:
        name, split, start, n = plan[i]
        # a retry first looks for the part of the attempt that died: it may have sealed the shard already
        return ShardTask(out, f"{version}/{name}", split, listing.slice(start, n).to_pylist(),
                         runs.part_location(out, version, name), spec_sha, cfg.max_input_bytes, cfg.sample_timeout_s,
                         isolate=attempt > 0, reuse=cfg.resume or attempt > 0, levels=levels)

    try:
        while queue or ex.pending:
            window = ex.window()
            while queue and len(ex.pending) < window:
                i, attempt = queue.popleft()
                ex.submit(i, task(i, attempt), attempt, spec_ref)
            i, t, attempt, result = ex.next()
            if isinstance(result, Exception) and ex.never_ran(result):
                waited = restarting.setdefault(i, time.monotonic())
                if time.monotonic() - waited < ACTOR_RESTART_WAIT_S:  # the same attempt again, once the actor is back
                    time.sleep(RESTART_POLL_S)
                    queue.appendleft((i, attempt))
                    continue
            restarting.pop(i, None)
            if isinstance(result, Exception):
                why = describe_failure(result)
                if attempt >= cfg.task_retries:
                    raise ShardFailedError(f"shard {t.name} failed {attempt + 1} times, last: {why}; the shards "
                                           f"sealed so far are kept: fix the cause and run again with --resume")
                retried += attempt == 0
                print(f"shard {t.name}: attempt {attempt + 1} failed ({why}); retrying it with each sample in a "
                      f"child process", file=sys.stderr, flush=True)
                queue.appendleft((i, attempt + 1))
                continue
            outcomes[i] = result
            reused += result["reused"]
            for stage, n in result["rejects"].items():
                counts[stage] = counts.get(stage, 0) + n
                shown = examples.setdefault(stage, [])
                shown += result["examples"][stage][:3 - len(shown)]
            bar.update(result["inputs"])
            bar.set_postfix(rejected=sum(counts.values()), reused=reused)
            check_rejects(counts, inputs, cfg.max_reject_fraction, examples)
    except BaseException:
        ex.cancel()
        raise
    finally:
        bar.close()
    return outcomes, retried


def _parts(out: str, version: str, plan: list[tuple[str, str, int, int]]) -> Iterator[dict[str, Any]]:
    """Every shard's part file in plan order, ``PART_READERS`` fetched ahead."""
    locations = [runs.part_location(out, version, name) for name, *_ in plan]
    with ThreadPoolExecutor(PART_READERS) as pool:
        ahead = collections.deque()
        for loc in locations:
            ahead.append(pool.submit(storage.read_text, loc))
            if len(ahead) > PART_READERS:
                yield json.loads(ahead.popleft().result())
        while ahead:
            yield json.loads(ahead.popleft().result())


def write_tables(out: str, version: str, plan: list[tuple[str, str, int, int]], levels: int,
                 scan_rejects: list[Reject]) -> dict[str, int]:
    """Stream every part (in plan order) into ``VERSION/index.parquet`` and ``VERSION/rejects.parquet``;
    the rejects per stage. Each file goes to a local temp file and appears in one piece."""
    by_stage = {"scan": len(scan_rejects)} if scan_rejects else {}
    with parquet_stream(storage.join(out, version, REJECTS_FILE), REJECTS_SCHEMA) as rejects_out, \
            contextlib.ExitStack() as stack:
        if scan_rejects:
            rejects_out.write_table(pa.Table.from_pylist([asdict(r) for r in scan_rejects], schema=REJECTS_SCHEMA))
        index_out, schema = None, None
        for part in _parts(out, version, plan):
            if part["rejects"]:
                rejects_out.write_table(pa.Table.from_pylist(part["rejects"], schema=REJECTS_SCHEMA))
                for r in part["rejects"]:
                    by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
            if part["rows"]:
                if index_out is None:  # the compressor's meta columns are known from the first rows
                    schema = index_schema(levels, meta_types(part["rows"]))
                    index_out = stack.enter_context(parquet_stream(storage.join(out, version, INDEX_FILE), schema))
                index_out.write_table(pa.Table.from_pylist(part["rows"], schema=schema))
        if index_out is None:  # every sample rejected (the reject guard was switched off)
            stack.enter_context(parquet_stream(storage.join(out, version, INDEX_FILE), index_schema(levels, {})))
    return by_stage


def finish(cfg: CompressConfig, out: str, version: str, spec: Spec, classes: list[str],
           plan: list[tuple[str, str, int, int]], outcomes: list[dict[str, Any]], scan_rejects: list[Reject],
           replaced: dict[str, Any] | None) -> tuple[list[ShardInfo], dict[str, int], dict[str, Any]]:
    """Write the index and rejects tables, then the manifest (the switch), then clean up; (shards, counts, summary)."""
    levels = len(spec.ladder)
    by_stage = write_tables(out, version, plan, levels, scan_rejects)
    layout = level_layout(cfg, spec)
    shards = [ShardInfo(e["name"], e["split"], e["samples"], e["bytes"], e["sha256"], layout, [],
                        o["shared_positions"]) for o in outcomes if (e := o["entry"]) is not None]
    counts = {s: sum(sh.samples for sh in shards if sh.split == s) for s in SPLITS}
    wids = write_wids_indexes(out, version, shards)
    write_manifest(out, spec, cfg.seed, to_dict(cfg), classes, shards, counts,
                   {"version": version, "index": f"{version}/{INDEX_FILE}", "rejects": f"{version}/{REJECTS_FILE}",
                    "wids": wids})
    runs.collect_garbage(out, version, replaced)
    stats = [o["stats"] for o in outcomes]
    samples = sum(s["samples"] for s in stats)
    tokens = [sum(s["tokens"][i] for s in stats if s["tokens"]) for i in range(levels)]
    truncated = [s["truncated"] for s in stats if s["truncated"] is not None]
    return shards, counts, {
        "rejects": sum(by_stage.values()), "rejects_by_stage": by_stage,
        "mean_tokens": [round(t / max(1, samples), 1) for t in tokens],
        "truncated": sum(truncated) if truncated else None,
        "reused_shards": sum(o["reused"] for o in outcomes),
        # seconds the tasks spent per step (wall), and their CPU seconds, summed over shards: where the time goes
        "task_seconds": {k: round(sum(o["timing"].get(k, 0.0) for o in outcomes), 2)
                         for k in ("check", "warm_up", "read", "compress", "write", "cpu")},
    }


def summarise_manifest(out: str, manifest: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The summary of a complete dataset (``--resume`` after the run already finished)."""
    spec = Spec.from_json(manifest["spec"])
    counts = manifest["counts"]
    with storage.arrow_file(storage.join(out, manifest.get("rejects", REJECTS_FILE))) as f:
        rejects = pq.ParquetFile(f).metadata.num_rows
    return {"output": out, "version": manifest.get("version"), "samples": sum(counts.values()), "counts": counts,
            "rejects": rejects, "shards": len(manifest["shards"]), "bytes": sum(s["bytes"] for s in manifest["shards"]),
            "seconds": elapsed, "samples_per_s": 0.0, "ladder": [lv.name for lv in spec.ladder],
            "tokens": [lv.tokens for lv in spec.ladder], "mean_tokens": [lv.tokens for lv in spec.ladder],
            "truncated": None, "reused_shards": len(manifest["shards"]), "retried_shards": 0}


def format_summary(s: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
    stages = ", ".join(f"{k} {v}" for k, v in (s.get("rejects_by_stage") or {}).items())
    lines = [
        f"compressed {s['samples']} samples ({counts}); {s['rejects']} rejected"
        + (f" ({stages})" if stages else "") + " (see rejects.parquet)",
        f"ladder {s['ladder']} -> tokens {s['tokens']}" + (
            f" (mean per sample {s['mean_tokens']})" if s.get("mean_tokens", s["tokens"]) != s["tokens"] else ""),
        *([f"{s['truncated']} samples truncated to the maximum length before compression"]
          if s.get("truncated") is not None else []),
        f"{s['shards']} shards, {s['bytes'] / 1e6:.1f} MB, in {s['seconds']:.1f} s "
        f"({s['samples_per_s']:.0f} samples/s)" + (f"; a sample is KEY.{{{', '.join(s['payloads'])}, cls, json}}"
                                                   if s.get("payloads") else ""),
    ]
    if s.get("reused_shards") or s.get("retried_shards"):
        lines.append(f"reused {s.get('reused_shards', 0)} sealed shards; retried {s.get('retried_shards', 0)} "
                     f"shards whose task died")
    if s.get("phases"):
        lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in s["phases"].items())
                     + f"; driver peak RSS {s['driver_peak_rss_mb']} MB")
    version = s.get("version") or "."
    lines.append(f"wrote {s['output']}/{MANIFEST_FILE} -> {version}/{{*.tar, {INDEX_FILE}, {REJECTS_FILE}}}")
    return "\n".join(lines)
