"""Unit tests for training/data.py stages on plain lists (no shards) and the LR schedule in training/model.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icpc.contract import draw_level, encode_sample
from icpc.pipeline.modalities.image import ImageConfig, build_spec
from icpc.batching import collate
from icpc.training.data import apply_strategy, batch_by_level, fixed_level, pick_levels, steps_per_epoch
from icpc.training.model import warmup_cosine

# 28 px images, 4 px patches: level 0 is a 7x7 grid, level 1 (12 px) a 3x3 grid.
SPEC = build_spec(ImageConfig(sides=[28, 12], patch=4, channels=1))
CONSISTENT_3X3 = [8, 10, 12, 22, 24, 26, 36, 38, 40]  # centres 7/3 (i + .5) -> 1, 3, 5 on each axis
GRID_TOKENS = {0: 4, 1: 2, 2: 1}  # tokens per level in the synthetic grid samples below


def grid_sample(i: int, level: int) -> dict:
    n = GRID_TOKENS[level]
    return {"key": f"k{i}", "label": i % 3, "level": level,
            "tokens": np.full((n, 2), i, dtype=np.uint8), "positions": np.arange(n, dtype=np.int32)}


def text_sample(i: int, length: int) -> dict:
    return {"key": f"t{i}", "label": i, "level": 1,
            "tokens": np.arange(1, length + 1, dtype=np.int64) + 10 * i,
            "positions": np.arange(length, dtype=np.int32) * 2}


# ----------------------------------------------------------------------------- spec used below


def test_build_spec_for_the_tests():
    assert SPEC.reference_grid == (7, 7)
    assert [lv.grid for lv in SPEC.ladder] == [(7, 7), (3, 3)]
    assert [lv.tokens for lv in SPEC.ladder] == [49, 9]
    assert SPEC.tokenization["token_dim"] == 16


# ----------------------------------------------------------------------------- batch_by_level


def test_batch_by_level_hand_traced():
    levels = [0, 1, 0, 0, 1, 2, 0]
    batches = list(batch_by_level([grid_sample(i, lv) for i, lv in enumerate(levels)], batch_size=2))
    # k0,k2 fill level 0; k1,k4 fill level 1; k3,k6 fill level 0 again; k5 (level 2) is flushed at the end.
    assert [(b["level"], b["keys"]) for b in batches] == [
        (0, ["k0", "k2"]), (1, ["k1", "k4"]), (0, ["k3", "k6"]), (2, ["k5"])]
    assert batches[0]["tokens"].shape == (2, 4, 2)
    assert batches[1]["tokens"].shape == (2, 2, 2)
    assert batches[3]["tokens"].shape == (1, 1, 2)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10])
def test_batch_by_level_partitions_the_stream(batch_size):
    rng = np.random.default_rng(batch_size)
    levels = rng.integers(0, 3, 50).tolist()
    batches = list(batch_by_level([grid_sample(i, lv) for i, lv in enumerate(levels)], batch_size))
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(keys) == sorted(f"k{i}" for i in range(50)), "every sample exactly once"
    for b in batches:
        assert all(levels[int(k[1:])] == b["level"] for k in b["keys"]), "one level per batch"
        assert 1 <= len(b["keys"]) <= batch_size
    for level in range(3):
        sizes = [len(b["keys"]) for b in batches if b["level"] == level]
        assert sum(sizes) == levels.count(level)
        assert sum(s < batch_size for s in sizes) <= 1, "at most one partial batch per level"
        assert len(sizes) == math.ceil(levels.count(level) / batch_size)


def test_batch_by_level_empty_stream():
    assert list(batch_by_level([], 4)) == []


# ----------------------------------------------------------------------------- collate


def test_collate_grid_samples():
    batch = collate([grid_sample(0, 0), grid_sample(1, 0), grid_sample(2, 0)])
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


# ----------------------------------------------------------------------------- steps per epoch


@pytest.mark.parametrize("samples, world, batch_size, expected", [
    (1000, 4, 32, 7),    # 1000 // 128
    (1024, 2, 64, 8),
    (1023, 2, 64, 7),
    (100, 8, 32, 1),     # fewer samples than one global batch: still one step
    (0, 1, 32, 1),
])
def test_steps_per_epoch(samples, world, batch_size, expected):
    assert steps_per_epoch(samples, world, batch_size) == expected


# ----------------------------------------------------------------------------- apply_strategy


def _image_samples():
    return [
        {"key": "a", "label": 0, "level": 1, "tokens": np.zeros((9, 16), np.uint8),
         "positions": np.array(CONSISTENT_3X3, dtype=np.int32)},
        {"key": "b", "label": 1, "level": 0, "tokens": np.zeros((49, 16), np.uint8),
         "positions": np.arange(49, dtype=np.int32)},
    ]


@pytest.mark.parametrize("strategy, level1", [
    ("consistent", CONSISTENT_3X3),
    ("corner", [0, 1, 2, 7, 8, 9, 14, 15, 16]),
    ("renumber", list(range(9))),
    ("interpolate", list(range(9))),  # rows of the table resized to 3x3
])
def test_apply_strategy(strategy, level1):
    out = list(apply_strategy(_image_samples(), SPEC, strategy))
    assert [s["key"] for s in out] == ["a", "b"]
    assert out[0]["positions"].tolist() == level1
    # Level 0 is the reference grid itself: every strategy gives 0..48.
    assert out[1]["positions"].tolist() == list(range(49))
    assert all(len(s["positions"]) == len(s["tokens"]) for s in out)


def test_apply_strategy_unknown_raises():
    with pytest.raises(ValueError, match="diagonal"):
        list(apply_strategy(_image_samples(), SPEC, "diagonal"))


# ----------------------------------------------------------------------------- pick_levels / fixed_level


def _raw(i: int) -> dict:
    levels = [(np.full((49, 16), i, np.uint8), np.arange(49)), (np.full((9, 16), i, np.uint8), CONSISTENT_3X3)]
    return encode_sample(f"img{i}", i % 4, levels, {"i": i})


def test_pick_levels_uses_draw_level():
    raws = [_raw(i) for i in range(40)]
    out = list(pick_levels(raws, seed=3, epoch=2, weights=[1, 1]))
    assert [s["key"] for s in out] == [f"img{i}" for i in range(40)]
    for s in out:
        assert s["level"] == draw_level(3, 2, s["key"], [1, 1])
        assert len(s["tokens"]) == (49 if s["level"] == 0 else 9)
        assert s["label"] == int(s["key"][3:]) % 4
    assert {s["level"] for s in out} == {0, 1}


def test_fixed_level():
    out = list(fixed_level([_raw(i) for i in range(5)], 1))
    assert [s["level"] for s in out] == [1] * 5
    assert all(s["positions"].tolist() == CONSISTENT_3X3 for s in out)


def test_pick_levels_skips_a_sample_missing_its_level():
    partial = _raw(0)
    del partial["l1.tok.npy"], partial["l1.pos.npy"]
    with pytest.warns(UserWarning, match="img0"):
        out = list(fixed_level([partial, _raw(1)], 1))
    assert [s["key"] for s in out] == ["img1"]


# ----------------------------------------------------------------------------- LR schedule


def test_warmup_cosine():
    total, warmup = 100, 10
    lrs = [warmup_cosine(s, total, warmup) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.1)          # (0 + 1) / 10: near 0, never exactly 0
    assert lrs[9] == pytest.approx(1.0)          # end of warmup
    assert lrs[10] == pytest.approx(1.0)         # cosine starts at its peak
    assert lrs[55] == pytest.approx(0.5)         # halfway through the decay: (1 + cos(pi/2)) / 2
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert max(lrs) == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(150, total, warmup) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_without_warmup():
    assert warmup_cosine(0, 10, 0) == pytest.approx(1.0)
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 0) == pytest.approx(0.0, abs=1e-12)


def test_a_rank_whose_shards_hold_nothing_readable_fails_instead_of_spinning(tmp_path):
    import webdataset as wds

    from icpc.pipeline.modalities.image import ImageConfig, build_spec
    from icpc.training.data import train_batches

    shard = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(shard), encoder=False) as w:  # samples without any level: nothing to train on
        for i in range(3):
            w.write({"__key__": f"k{i}", "cls": b"1", "json": b"{}"})
    stream = train_batches([str(shard)], build_spec(ImageConfig()), seed=0, epoch=0, rank=0, world=1,
                           batch_size=2, weights=[1.0], strategy="consistent", shuffle_buffer=2)
    with pytest.raises(RuntimeError, match="no readable sample"):
        next(stream)


def test_resume_refuses_settings_that_change_the_run(tmp_path):
    from icpc.config import TrainConfig, to_dict
    from icpc.training.checkpoint import check_resume_config

    saved = to_dict(TrainConfig())
    check_resume_config(saved, to_dict(TrainConfig(epochs=20)), tmp_path / "last.pt")  # more epochs: fine
    with pytest.raises(ValueError, match=r"strategy: checkpoint has 'consistent', this run has 'corner'"):
        check_resume_config(saved, to_dict(TrainConfig(strategy="corner", batch_size=8)), tmp_path / "last.pt")


def test_length_buckets_keep_short_and_long_texts_apart():
    from icpc.training.data import batch_by_level

    samples = [{"key": f"k{i}", "label": 0, "level": 0, "tokens": np.arange(n, dtype=np.int32),
                "positions": np.arange(n, dtype=np.int32)} for i, n in enumerate([3, 30, 4, 31, 5, 29])]
    plain = list(batch_by_level(iter(samples), 2))
    bucketed = list(batch_by_level(iter(samples), 2, length_bucket=8))
    assert [b["tokens"].shape for b in plain] == [(2, 30), (2, 31), (2, 29)]  # every batch pads a short text
    assert sorted(b["tokens"].shape for b in bucketed) == [(1, 5), (1, 29), (2, 4), (2, 31)]
    assert sorted(k for b in bucketed for k in b["keys"]) == sorted(s["key"] for s in samples)
