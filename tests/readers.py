"""Independent readers for checking shards: Python's tarfile and numpy, never the writer's own code."""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """A shard's members grouped by sample key (``KEY.l0.tok.npy`` -> ``{KEY: {"l0.tok.npy": bytes}}``)."""
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, _, member = m.name.partition(".")
            out[key][member] = tf.extractfile(m).read()
    return out


def npy(data: bytes) -> np.ndarray:
    """Decode one ``.npy`` member, refusing pickled objects."""
    return np.load(io.BytesIO(data), allow_pickle=False)
