"""Batching shared by training, evaluation and serving: same-level samples stacked into tensors."""

from __future__ import annotations

from typing import Any

import numpy as np


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-level samples: tokens (B, N, ...), positions (B, N) int64, labels (B,).

    Samples of one level have one length for grid modalities; for text they are right-padded
    with 0 and ``padding_mask`` marks the padding (True = pad). Optional per-sample fields are
    carried along: ``key`` -> ``keys`` (list), ``row`` -> ``rows`` (int64), ``weight`` -> ``weights``
    (float32 loss weights; 1 when absent).
    """
    import torch

    lengths = [len(s["tokens"]) for s in samples]
    n = max(lengths)
    tokens = np.stack([_pad(s["tokens"], n) for s in samples])
    positions = np.stack([_pad(np.asarray(s["positions"], dtype=np.int64), n) for s in samples])
    batch = {
        "tokens": torch.from_numpy(tokens),
        "positions": torch.from_numpy(positions),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "level": samples[0]["level"],
        "keys": [s.get("key", "") for s in samples],
        "rows": torch.tensor([s.get("row", -1) for s in samples], dtype=torch.long),
        "weights": torch.tensor([s.get("weight", 1.0) for s in samples], dtype=torch.float32),
        "padding_mask": None,
    }
    if min(lengths) != n:
        batch["padding_mask"] = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
    return batch


def _pad(array: np.ndarray, n: int) -> np.ndarray:
    if len(array) == n:
        return array
    pad = [(0, n - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad)
