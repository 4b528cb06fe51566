"""One shard task: keep the sealed shard (a resumed run), or read, compress and write it, then its part file.

A Ray task (or a call on a long-lived actor) runs ``run_shard`` for one shard of the plan. It
reads its inputs and writes its shard through the storage layer (a path, NFS, ``s3://``,
``gs://``), atomically, hashing what it writes; then it writes the shard's part file (manifest
entry, index rows, rejects) beside the run's state, and returns only a summary to the driver.
A part file marks the shard sealed: a resumed run that finds one with the same plan digest, and a
shard whose size and sha256 match it, keeps both.

Poison inputs: the first attempt compresses in the task's own process, with a per-sample alarm
(SIGALRM at its default action ends the process, even inside a C call that never returns to
Python), so a decoder that hangs dies like one that crashes. The driver retries a shard whose
task died with ``isolate=True``: each sample then runs in a child process (``sandbox.py``), and
the one that kills or hangs its child becomes a reject with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator

from icpc import storage
from icpc.contract import Spec
from icpc.pipeline.modalities import get_modality
from icpc.pipeline.runs import json_default, plan_digest
from icpc.pipeline.sandbox import Sandbox, SampleError
from icpc.pipeline.writer import ShardBuilder

EXAMPLES = 3            # reject examples per stage a task reports to the driver (for the reject guard's message)


@dataclass
class ShardTask:
    """What one task builds: a shard of the plan and where its outputs go."""

    dataset: str                    # dataset folder (path or URL)
    name: str                       # shard file, relative to ``dataset`` (``v-ID/train-000000.tar``)
    split: str
    records: list[dict[str, Any]]   # listing rows (scan.LISTING_SCHEMA), in shard order
    part: str                       # location of the shard's part file
    spec_sha: str                   # sha256 of the spec JSON (part of the plan digest)
    max_input_bytes: int
    sample_timeout_s: float         # s per sample to decode and compress
    isolate: bool = False           # compress each sample in a child process (a retry after the task died)
    reuse: bool = False             # keep a sealed shard with the same plan (a resumed run)
    levels: list[dict[str, Any]] | None = None  # the manifest's layout.levels (codec per level); None = the default


def read_input(record: dict[str, Any], max_bytes: int) -> bytes:
    """The raw bytes of one input; refused when empty or over ``max_bytes`` (by the listed size: one GET, no HEAD)."""
    if record.get("payload") is not None:
        return record["payload"]
    size = int(record.get("size", -1))
    if size < 0:
        return storage.read_bytes(record["source"], max_bytes)
    if size == 0:
        raise ValueError("file is empty")
    if size > max_bytes:
        raise ValueError(f"file has {size} bytes, over max_input_bytes={max_bytes}")
    data = storage.read_bytes(record["source"])
    if not data:
        raise ValueError("file is empty")
    return data


def file_sha256(location: str) -> str:
    h = hashlib.sha256()
    with storage.open_read(location) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def alarm(seconds: float, armed: bool) -> Iterator[None]:
    """End this process if the block runs longer than ``seconds`` (SIGALRM at its default action)."""
    if armed:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _arm_alarm() -> bool:
    """Set SIGALRM to its default action (terminate); False where signals cannot be set (not the main thread)."""
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        return True
    except ValueError:
        return False


def sealed_part(task: ShardTask, digest: str) -> dict[str, Any] | None:
    """The part of an earlier attempt at this shard, if it was built from the same plan and its shard is intact."""
    try:
        part = json.loads(storage.read_text(task.part))
    except (FileNotFoundError, ValueError):
        return None
    if part.get("plan") != digest:
        return None
    entry = part["entry"]
    if entry is not None:
        location = storage.join(task.dataset, entry["name"])
        try:
            if storage.size(location) != entry["bytes"] or file_sha256(location) != entry["sha256"]:
                return None
        except FileNotFoundError:
            return None
    return part


def run_shard(task: ShardTask, spec_json: dict[str, Any]) -> dict[str, Any]:
    """Build (or keep) one shard; returns its summary: manifest entry, reject counts and examples, stats."""
    started, cpu = time.perf_counter(), time.process_time()
    digest = plan_digest(task.spec_sha, task.name, task.records)
    part = sealed_part(task, digest) if task.reuse else None
    reused = part is not None
    timing = {"check": time.perf_counter() - started}
    if part is None:
        part = build(task, spec_json, timing)
        t = time.perf_counter()
        part["plan"] = digest
        storage.write_text(task.part, json.dumps(part, separators=(",", ":"), default=json_default))
        timing["write"] += time.perf_counter() - t
    timing["cpu"] = time.process_time() - cpu  # CPU seconds of this process (a child's are not counted)
    counts: dict[str, int] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    for r in part["rejects"]:
        counts[r["stage"]] = counts.get(r["stage"], 0) + 1
        if len(examples.setdefault(r["stage"], [])) < EXAMPLES:
            examples[r["stage"]].append(r)
    return {"name": task.name, "split": task.split, "entry": part["entry"],
            "shared_positions": part["shared_positions"], "rejects": counts, "examples": examples,
            "stats": part["stats"], "reused": reused, "isolated": task.isolate, "inputs": len(task.records),
            "timing": timing}


def build(task: ShardTask, spec_json: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
    """Read, decode and compress every record and write the shard; the part (without its plan digest).

    A sample that cannot be read or compressed becomes a reject (key, source, stage, reason) and
    the shard goes on without it; a shard whose every sample was rejected is not written.
    ``timing`` gets the seconds spent per step: read, compress (decode, compress, add), write.
    """
    timing.update(read=0.0, compress=0.0, write=0.0)
    spec = Spec.from_json(spec_json)
    modality = get_modality(spec.modality)
    builder, rejects = ShardBuilder(spec, modality.shared_positions, task.levels), []
    level0_as_input = modality.level0_as_input if builder.layout[0].get("as_input") else None
    sandbox = Sandbox(spec_json, task.sample_timeout_s) if task.isolate else None
    armed = not task.isolate and _arm_alarm()
    if modality.warm_up is not None and sandbox is None:  # before the per-sample alarm (the child warms up itself)
        t = time.perf_counter()
        modality.warm_up(spec)
        timing["warm_up"] = time.perf_counter() - t
    try:
        for rec in task.records:
            stage, t = "read", time.perf_counter()
            try:
                data = read_input(rec, task.max_input_bytes)
                stage, t1 = "compress", time.perf_counter()
                timing["read"] += t1 - t
                if sandbox is not None:
                    levels, meta = sandbox.compress(data)
                else:
                    with alarm(task.sample_timeout_s, armed):
                        out = modality.compress_bytes(data, spec)
                    levels, meta = out.levels, out.meta
                builder.add(rec, levels, meta, level0_as_input(data, spec) if level0_as_input else None)
                timing["compress"] += time.perf_counter() - t1
            except SampleError as exc:
                rejects.append({"key": rec["key"], "source": rec["source"], "stage": stage, "error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - any failure of one sample is recorded, the job goes on
                rejects.append({"key": rec["key"], "source": rec["source"], "stage": stage,
                                "error": f"{type(exc).__name__}: {exc}"})
    finally:
        if sandbox is not None:
            sandbox.close()
    if not len(builder):
        return {"entry": None, "shared_positions": {}, "rows": [], "rejects": rejects, "stats": _stats([])}
    t = time.perf_counter()
    info = builder.write(storage.join(task.dataset, task.name), task.name, task.split)
    timing["write"] += time.perf_counter() - t
    return {"entry": info.manifest_entry(), "shared_positions": {str(k): v for k, v in info.shared_positions.items()},
            "rows": info.rows, "rejects": rejects, "stats": _stats(info.rows)}


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the summary sums over shards: samples, tokens per level, truncated samples (None: not reported)."""
    levels = sorted(int(k[len("tokens_l"):]) for k in (rows[0] if rows else {}) if k.startswith("tokens_l"))
    return {"samples": len(rows), "tokens": [sum(r[f"tokens_l{i}"] for r in rows) for i in levels],
            "truncated": sum(bool(r["truncated"]) for r in rows) if any("truncated" in r for r in rows) else None}


class ShardActor:
    """``run_shard`` in a long-lived Ray actor: what the compressor caches per process (a teacher
    model) is loaded once per actor and kept for every shard it builds."""

    def build(self, task: ShardTask, spec_json: dict[str, Any]) -> dict[str, Any]:
        return run_shard(task, spec_json)
