"""The loader on real compressed shards: what a batch holds, only the drawn level read, corrupt and truncated
data skipped and counted, the same batches for any worker count, evaluation shards dealt once each."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from icpc.contract import draw_levels
from icpc.dataset import open_dataset
from icpc.training.data import BatchDataset, PlanSampler, eval_batches, make_loader
from icpc.training.plan import plan_epoch
from tests.readers import index_rows, manifest, shard_samples

CONSISTENT_3X3 = [8, 10, 12, 22, 24, 26, 36, 38, 40]  # 12 px of 28, 4 px patches: centres -> cells 1, 3, 5


@pytest.fixture(scope="module")
def dataset(compressed):
    return open_dataset(str(compressed))


@pytest.fixture(scope="module")
def by_hand(compressed):
    """Every sample decoded by the independent reader: {key: {"label", "levels"}}."""
    out = {}
    for path in [compressed / s["name"] for s in manifest(compressed)["shards"]]:
        out.update(shard_samples(path, "uint8", (16,)))
    return out


def batch_for(data, table, rows, level, strategy="consistent"):
    from icpc.training.data import BatchRequest

    ds = BatchDataset(table, data.spec, data.shared_positions, strategy)
    rows = np.asarray(rows, dtype=np.int64)
    return ds[BatchRequest(0, level, rows, np.ones(len(rows), np.float32), len(rows))], ds


def test_a_batch_holds_the_rows_at_their_level_as_the_shards_store_them(dataset, by_hand, compressed):
    table = dataset.table("train")
    keys = [r["key"] for r in index_rows(compressed) if r["split"] == "train"]
    batch, ds = batch_for(dataset, table, [3, 50, 7], level=4)
    assert batch["tokens"].shape == (3, 9, 16) and batch["level"] == 4 and batch["rows"].tolist() == [3, 50, 7]
    for i, row in enumerate([3, 50, 7]):
        tokens, positions = by_hand[keys[row]]["levels"][4]
        assert np.array_equal(batch["tokens"][i].numpy(), tokens)
        assert batch["positions"][i].tolist() == positions.tolist() == CONSISTENT_3X3
        assert batch["labels"][i] == by_hand[keys[row]]["label"]
    # only the three level-4 payloads were read: nothing of the other levels, no tar header
    assert batch["bytes_read"] == batch["payload_bytes"] == sum(table.size[[3, 50, 7], 4])


@pytest.mark.parametrize("strategy, expected", [
    ("corner", [0, 1, 2, 7, 8, 9, 14, 15, 16]), ("renumber", list(range(9))), ("interpolate", list(range(9)))])
def test_the_position_strategy_is_applied_per_sample(dataset, strategy, expected):
    batch, _ = batch_for(dataset, dataset.table("train"), [1, 2], level=4, strategy=strategy)
    assert batch["positions"].tolist() == [expected, expected]


def test_a_corrupt_payload_is_skipped_and_counted(dataset, compressed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(compressed, data)
    ds = open_dataset(str(data))
    table = ds.table("train")
    row = 5
    path = table.shard_locations[table.shard[row]]
    raw = bytearray(open(path, "rb").read())
    start = int(table.offset[row, 2])
    raw[start + 3:start + 8] = bytes(b ^ 0xFF for b in raw[start + 3:start + 8])  # 5 flipped bytes in one payload
    open(path, "wb").write(bytes(raw))
    batch, reader_ds = batch_for(ds, table, [4, 5, 6], level=2)
    assert batch["rows"].tolist() == [4, 6] and batch["skipped"] == 1
    assert reader_ds.reader.skipped == {"payload CRC-32 differs from the index (corrupt bytes)": 1}


def test_a_truncated_shard_is_skipped_whole_without_reading_it(dataset, compressed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(compressed, data)
    ds = open_dataset(str(data))
    table = ds.table("train")
    path = table.shard_locations[0]
    open(path, "r+b").truncate(table.shard_bytes[0] - 1000)
    in_first = np.flatnonzero(table.shard == 0)[:3]
    batch, _ = batch_for(ds, table, in_first, level=0)
    # all three skipped: the batch is one zero stand-in of weight 0, so the rank still takes its step
    assert batch["skipped"] == 3 and batch["weights"].tolist() == [0.0] and batch["bytes_read"] == 0
    assert batch["tokens"].shape == (1, 49, 16)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_loader_gives_the_same_batches_in_the_same_order_for_any_worker_count(dataset, workers):
    table = dataset.table("train")
    levels = draw_levels(0, 0, table.key_hash, [1] * 5)
    plan = plan_epoch(0, 0, 2, 16, levels, table.shard)
    sampler = PlanSampler(rank=1)
    sampler.set_plan(plan, start=3)
    loader = make_loader(BatchDataset(table, dataset.spec, dataset.shared_positions, "consistent"), sampler,
                         workers, prefetch=2, pin_memory=False)
    got = [(b["step"], b["level"], b["rows"].tolist()) for b in loader]
    want = [(s, int(plan.levels[s]), plan.rank_rows(s, 1)[0].tolist()) for s in range(3, plan.steps)]
    assert got == want


def test_evaluation_deals_whole_shards_and_reads_each_sample_once(dataset, compressed):
    shards = dataset.shards("val") + dataset.shards("test")
    assert len(shards) >= 2
    seen = {}
    for rank in (0, 1):
        seen[rank] = [k for b in eval_batches(shards, dataset.spec, 1, batch_size=32, strategy="consistent",
                                              rank=rank, world=2) for k in b["keys"]]
    expected = [r["key"] for r in index_rows(compressed) if r["split"] in ("val", "test")]
    assert sorted(seen[0] + seen[1]) == sorted(expected) and not set(seen[0]) & set(seen[1])
    limited = [k for b in eval_batches(shards, dataset.spec, 0, batch_size=7, strategy="consistent", limit=10)
               for k in b["keys"]]
    assert len(limited) == 10
