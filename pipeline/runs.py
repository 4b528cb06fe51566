"""A dataset folder across runs: version folders, the in-progress marker, resume and the atomic switch of --overwrite.

    OUT/
      manifest.json              the dataset; names the files of one version folder. Written last: the switch
      in-progress.json           only while a run builds: its version, shard count, settings (the marker)
      v-20261202T001500Z-1a2b3c/ one run's data files
        train-000000.tar ...     shards, each written whole by the Ray task that built it
        index.parquet            one row per sample
        rejects.parquet          one row per input that was not compressed
        _run/                    the run's own state, removed once the manifest names the version
          listing.parquet        the ordered input listing: a resumed run cuts the same shards from it
          scan-rejects.parquet   inputs rejected while listing
          spec.json              the ladder and tokenization (text: vocabulary and IDF) of the run
          parts/NAME.json        one per finished shard: its manifest entry, index rows, rejects and
                                 the digest of what it was built from

A reader opens ``manifest.json`` and follows its names, so it finds the old dataset or the new
one, never a mix: a new run writes only into its own version folder, and the manifest write (an
atomic rename locally, one PUT on an object store) is the switch. Only then are the replaced
version and the marker removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from icpc import storage
from icpc.dataset import MANIFEST_FILE

MARKER = "in-progress.json"
RUN_DIR = "_run"
PARTS_DIR = "parts"
LISTING_FILE = "listing.parquet"
SCAN_REJECTS_FILE = "scan-rejects.parquet"
SPEC_FILE = "spec.json"
VERSION_PREFIX = "v-"


# ----------------------------------------------------------------------------- pure functions


def new_version(now: float | None = None, token: str | None = None) -> str:
    """A version folder name that sorts by start time (UTC) and is unique: ``v-20261202T001500Z-1a2b3c``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{VERSION_PREFIX}{stamp}-{token or secrets.token_hex(3)}"


def content_settings(config: Mapping[str, Any], run_fields: Iterable[str]) -> dict[str, Any]:
    """The settings that decide what a run builds (``config`` minus the fields that only say how to run)."""
    skip = set(run_fields)
    return {k: v for k, v in config.items() if k not in skip}


def setting_differences(before: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``name: before -> now`` for every setting that differs (sections compared field by field)."""
    out = []
    for k in sorted(set(before) | set(now)):
        a, b = before.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def plan_digest(spec_sha: str, name: str, records: list[Mapping[str, Any]]) -> str:
    """sha256 of what a shard is built from: the spec, its name and its records (payloads by hash)."""
    h = hashlib.sha256(f"{spec_sha}\n{name}\n".encode())
    for r in records:
        payload = r.get("payload")
        h.update(json.dumps([r["key"], r["source"], r["split"], int(r["label"]), r["label_name"], int(r.get("size", -1)),
                             hashlib.sha256(payload).hexdigest() if payload is not None else None]).encode())
    return h.hexdigest()


def json_default(value: Any) -> Any:
    """numpy scalars (a compressor's meta) as Python numbers for json.dumps."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------- locations


def run_dir(out: str, version: str) -> str:
    return storage.join(out, version, RUN_DIR)


def part_location(out: str, version: str, shard_file: str) -> str:
    return storage.join(run_dir(out, version), PARTS_DIR, shard_file.rsplit(".", 1)[0] + ".json")


def sealed_count(out: str, version: str) -> int:
    """Shards of the run in ``version`` that finished (one part file each)."""
    return sum(n.endswith(".json") for n in storage.list_dir(storage.join(run_dir(out, version), PARTS_DIR)))


# ----------------------------------------------------------------------------- the output folder


@dataclass
class OutputState:
    """What ``out`` holds before a run: a dataset (manifest), an interrupted run (marker), stray shards."""

    location: str
    manifest: dict[str, Any] | None
    marker: dict[str, Any] | None
    stray_shards: bool          # *.tar at the top without a manifest: an interrupted run of an older icpc

    @property
    def finished_marker(self) -> bool:
        """The marker's run already wrote the manifest (the driver stopped before removing the marker)."""
        return bool(self.marker and self.manifest and self.manifest.get("version") == self.marker["version"])


def inspect_output(out: str) -> OutputState:
    manifest = marker = None
    with contextlib.suppress(FileNotFoundError):
        manifest = json.loads(storage.read_text(storage.join(out, MANIFEST_FILE)))
    with contextlib.suppress(FileNotFoundError):
        marker = json.loads(storage.read_text(storage.join(out, MARKER)))
    stray = manifest is None and bool(storage.glob(out, "*.tar"))
    return OutputState(out, manifest, marker, stray)


def decide(state: OutputState, overwrite: bool, resume: bool, settings: Mapping[str, Any],
           run_fields: Iterable[str]) -> str:
    """What a run does with ``state``: ``"new"`` (a new version), ``"resume"`` (the marker's run) or
    ``"complete"`` (``--resume`` of a run that already finished with these settings: nothing to do).

    Raises FileExistsError naming the folder, what it holds and the flag that goes on.
    """
    out = state.location
    marker = None if state.finished_marker else state.marker
    wanted = content_settings(settings, run_fields)
    if marker is not None:
        if resume:
            diffs = setting_differences(content_settings(marker["config"], run_fields), wanted)
            if diffs:
                raise FileExistsError(f"--resume: the interrupted run {marker['version']} in {out} was started with "
                                      f"other settings ({'; '.join(diffs)}); pass the same settings to continue it, "
                                      f"or --overwrite without --resume to start over")
            return "resume"
        if not overwrite:
            sealed = sealed_count(out, marker["version"])
            raise FileExistsError(f"{out} holds an interrupted run {marker['version']} (started {marker['started']}, "
                                  f"{sealed} of {marker['shards']} shards sealed); pass --resume to continue it "
                                  f"or --overwrite to start over")
        return "new"
    if state.manifest is not None:
        if resume:
            diffs = setting_differences(content_settings(state.manifest.get("config", {}), run_fields), wanted)
            if not diffs:
                return "complete"
            if not overwrite:
                raise FileExistsError(f"{out} holds a complete dataset built with other settings ({'; '.join(diffs)}) "
                                      f"and no interrupted run; pass --overwrite to replace it")
        elif not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it "
                                  f"or choose another --output")
        return "new"
    if state.stray_shards and not overwrite:
        raise FileExistsError(f"{out} holds shards but no manifest.json (an interrupted run of an older icpc, which "
                              f"cannot be resumed); pass --overwrite to start over")
    return "new"


def write_marker(out: str, version: str, shards: int, samples: int, config: Mapping[str, Any],
                 replaces: str | None) -> dict[str, Any]:
    """Write ``in-progress.json``: from now on a re-run knows this folder holds an interrupted run."""
    marker = {"version": version, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shards": shards,
              "samples": samples, "replaces": replaces, "config": dict(config)}
    storage.write_text(storage.join(out, MARKER), json.dumps(marker, indent=1, default=json_default))
    return marker


def discard_run(out: str, marker: Mapping[str, Any] | None, keep: str | None) -> None:
    """Remove an interrupted run's version folder (``--overwrite`` starts over), never the ``keep`` version."""
    if marker and marker["version"] != keep:
        storage.remove_tree(storage.join(out, marker["version"]))
    storage.remove(storage.join(out, MARKER))


def collect_garbage(out: str, version: str, replaced: Mapping[str, Any] | None) -> list[str]:
    """After the switch to ``version``: remove the replaced dataset, stray versions, the marker and the run state.

    The replaced dataset's files are the ones its manifest names (an older icpc put them at the
    top of the folder); any other ``v-*`` folder is an abandoned run. Returns what was removed.
    """
    removed = []
    if not storage.is_local(out):  # list what is there now, not what this process listed before the run
        storage.filesystem(out)[0].invalidate_cache()
    if replaced is not None and not replaced.get("version"):
        names = [s["name"] for s in replaced.get("shards", [])]
        names += [replaced.get("index", "index.parquet"), replaced.get("rejects", "rejects.parquet")]
        for name in names:
            if not name.startswith(version + "/"):
                storage.remove(storage.join(out, name))
                removed.append(name)
    for name in storage.list_dir(out):
        if name.startswith(VERSION_PREFIX) and name != version:
            storage.remove_tree(storage.join(out, name))
            removed.append(name)
        elif name.startswith(".") and ".tmp" in name:  # a temp file of a writer that was killed
            storage.remove(storage.join(out, name))
            removed.append(name)
    for stale in storage.glob(storage.join(out, version), ".*.tmp*"):  # a task killed while writing
        storage.remove(stale)
        removed.append(stale)
    storage.remove(storage.join(out, MARKER))
    storage.remove_tree(run_dir(out, version))
    return removed
