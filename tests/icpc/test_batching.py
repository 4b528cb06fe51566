"""icpc/batching.py: same-level samples stacked into tensors, text padded with a mask, weights carried along."""

from __future__ import annotations

import numpy as np
import torch

from icpc.batching import collate


def grid_sample(i: int, n: int = 4) -> dict:
    return {"key": f"k{i}", "label": i % 3, "level": 0,
            "tokens": np.full((n, 2), i, dtype=np.uint8), "positions": np.arange(n, dtype=np.int32)}


def text_sample(i: int, length: int) -> dict:
    return {"key": f"t{i}", "label": i, "level": 1,
            "tokens": np.arange(1, length + 1, dtype=np.int64) + 10 * i,
            "positions": np.arange(length, dtype=np.int32) * 2}


def test_collate_grid_samples():
    batch = collate([grid_sample(0), grid_sample(1), grid_sample(2)])
    assert batch["tokens"].shape == (3, 4, 2) and batch["tokens"].dtype == torch.uint8
    assert batch["positions"].dtype == torch.int64
    assert batch["positions"].tolist() == [[0, 1, 2, 3]] * 3
    assert batch["labels"].tolist() == [0, 1, 2] and batch["labels"].dtype == torch.long
    assert batch["keys"] == ["k0", "k1", "k2"] and batch["level"] == 0
    assert batch["padding_mask"] is None


def test_collate_pads_text():
    batch = collate([text_sample(0, 3), text_sample(1, 5), text_sample(2, 2)])
    assert batch["tokens"].tolist() == [
        [1, 2, 3, 0, 0],
        [11, 12, 13, 14, 15],
        [21, 22, 0, 0, 0],
    ]
    assert batch["positions"].tolist() == [
        [0, 2, 4, 0, 0],
        [0, 2, 4, 6, 8],
        [0, 2, 0, 0, 0],
    ]
    assert batch["padding_mask"].dtype == torch.bool
    assert batch["padding_mask"].tolist() == [
        [False, False, False, True, True],
        [False, False, False, False, False],
        [False, False, True, True, True],
    ]
    assert batch["labels"].tolist() == [0, 1, 2]


def test_collate_equal_length_text_has_no_mask():
    assert collate([text_sample(0, 4), text_sample(1, 4)])["padding_mask"] is None


def test_collate_carries_rows_and_loss_weights():
    samples = [{**grid_sample(0), "row": 7, "weight": 1.0}, {**grid_sample(1), "row": 9, "weight": 0.0}]
    batch = collate(samples)
    assert batch["rows"].tolist() == [7, 9] and batch["weights"].tolist() == [1.0, 0.0]
    assert collate([grid_sample(0)])["weights"].tolist() == [1.0]  # absent: weight 1
