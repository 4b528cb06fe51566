"""The reader side of a dataset (DESIGN contract 3): its manifest, shard listing and index, by URL.

Training, evaluation, calibration and serving read datasets only through this module; the
pipeline's writer (``icpc.pipeline.writer``) is the other side of the same contract.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from icpc import storage
from icpc.contract import SCHEMA_VERSION

INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
MANIFEST_FILE = "manifest.json"


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of the dataset at ``folder`` (a path or URL); refuses other schema versions."""
    path = storage.join(folder, MANIFEST_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: {folder!s} is not an ICPC dataset; build one with 'icpc compress'")
    manifest = json.loads(storage.read_text(path))
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {manifest.get('schema_version')} but this ICPC reads "
                         f"{SCHEMA_VERSION}; re-run 'icpc compress'")
    return manifest


def split_shards(manifest: Mapping[str, Any], folder: str, split: str) -> list[str]:
    """Locations of the shards of ``split``, in manifest order."""
    paths = [storage.join(folder, s["name"]) for s in manifest["shards"] if s["split"] == split]
    if not paths:
        raise ValueError(f"dataset {folder!s} has no {split!r} shards (splits: {dict(manifest['counts'])})")
    return paths


def split_shards_or_empty(manifest: Mapping[str, Any], folder: str, split: str) -> list[str]:
    return split_shards(manifest, folder, split) if manifest["counts"].get(split) else []
