"""icpc.ICPCLoader on real compressed shards: len, every sample once per epoch over the ranks, exact mid-epoch
and elastic resume from state_dict(), refusals; the world from the environment; argument errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import icpc
from icpc.loader import resolve_world
from tests.readers import index_rows


def train_keys(data) -> list[str]:
    """Keys of the training split from the Parquet index (independent reader)."""
    return [r["key"] for r in index_rows(data) if r["split"] == "train"]


def loader(data, rank: int, world: int, **kw) -> icpc.ICPCLoader:
    return icpc.ICPCLoader(str(data), batch_size=16, rank=rank, world_size=world, num_workers=kw.pop("workers", 0),
                           keys=True, **kw)


def keys_per_step(batches) -> list[list[str]]:
    return [[k for k, w in zip(b["keys"], b["weights"].tolist()) if w > 0] for b in batches]


def test_len_is_batches_per_rank_and_an_epoch_trains_every_sample_once(compressed):
    a, b = loader(compressed, 0, 2), loader(compressed, 1, 2, workers=1)
    steps = len(a)
    assert steps == len(b) > 0
    got_a, got_b = keys_per_step(a), keys_per_step(b)
    assert len(got_a) == len(got_b) == steps                  # the same steps on both ranks: no DDP hang
    trained = Counter(k for step in got_a + got_b for k in step)
    assert sorted(trained) == sorted(train_keys(compressed)) and set(trained.values()) == {1}
    assert a.epoch == 1 and a.batches_done == 0               # a finished pass moves to the next epoch
    assert keys_per_step(a) != got_a                           # epoch 1: another shuffle and other levels
    a.set_epoch(0)
    assert keys_per_step(a) == got_a                           # a pure function of (seed, epoch)


def test_a_state_dict_resumes_mid_epoch_with_the_next_batch(compressed):
    straight = loader(compressed, 1, 2)
    straight.set_epoch(1)
    want = keys_per_step(straight)
    first = loader(compressed, 1, 2)
    first.set_epoch(1)
    head = keys_per_step(b for _, b in zip(range(5), first))
    state = json.loads(json.dumps(first.state_dict()))        # plain JSON: a few counters, no sample bytes
    assert state["epoch"] == 1 and state["batches"] == 5 and len(json.dumps(state)) < 1000
    again = loader(compressed, 1, 2, workers=1)
    again.load_state_dict(state)
    assert again.epoch == 1 and again.batches_done == 5
    again.set_epoch(1)                                         # the epoch in progress: the position is kept
    assert head + keys_per_step(again) == want


def test_a_state_loaded_at_another_world_size_trains_the_rest_of_the_epoch_once(compressed):
    ranks = [loader(compressed, r, 2) for r in (0, 1)]
    done = [keys_per_step(b for _, b in zip(range(4), ld)) for ld in ranks]
    alone = loader(compressed, 0, 1)
    alone.load_state_dict(ranks[0].state_dict())
    assert alone.state_dict()["segments"] == [[2, 4]] and alone.batches_done == 0
    rest = keys_per_step(alone)
    trained = Counter(k for step in done[0] + done[1] + rest for k in step)
    assert sorted(trained) == sorted(train_keys(compressed)) and set(trained.values()) == {1}


def test_a_state_of_another_stream_is_refused_naming_the_setting(compressed):
    state = loader(compressed, 0, 2).state_dict()
    with pytest.raises(ValueError, match=r"seed: state has 0, this loader has 1"):
        loader(compressed, 0, 2, seed=1).load_state_dict(state)


def test_the_test_split_at_level_0_holds_every_test_sample_once_with_aliases(compressed):
    seen = Counter()
    for rank in (0, 1):
        for b in loader(compressed, rank, 2, split="test", schedule=icpc.LevelSchedule(baseline=True),
                        aliases=["hf", "timm"]):
            assert b["level"] == 0 and b["tokens"].shape[1:] == (49, 16)
            seen.update(k for k, w in zip(b["keys"], b["weights"].tolist()) if w > 0)
            width = 7
            assert torch.equal(b["patch_coord"][..., 0] * width + b["patch_coord"][..., 1], b["positions"])
            assert b["attention_mask"].dtype == torch.int64 and bool(b["attention_mask"].all())
    test_keys = [r["key"] for r in index_rows(compressed) if r["split"] == "test"]
    assert sorted(seen) == sorted(test_keys) and set(seen.values()) == {1}


def test_the_world_comes_from_explicit_arguments_then_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_world() == (3, 4, 2)
    assert resolve_world(rank=0, world_size=1) == (0, 1, 1)
    with pytest.raises(ValueError, match="rank=5, world_size=4"):
        resolve_world(rank=5)


def test_bad_arguments_are_named_before_any_data_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=0: must be positive.*num_workers=-2"):
        icpc.ICPCLoader(str(tmp_path / "nowhere"), batch_size=0, num_workers=-2)
    with pytest.raises(ValueError, match="strategy='diagonal'"):
        icpc.ICPCLoader(str(tmp_path / "nowhere"), strategy="diagonal")


def test_a_schedule_that_counts_from_the_end_needs_the_run_length():
    with pytest.raises(ValueError, match="pass epochs="):
        icpc.LevelSchedule(final_level0_epochs=1).at(0, 5)
    assert icpc.LevelSchedule().at(7, 5) == pytest.approx([0.2] * 5)   # uniform in every epoch
    assert icpc.LevelSchedule(final_level0_epochs=1, epochs=3).at(2, 5) == [1.0]
