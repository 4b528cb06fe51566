"""The training data plane: the epoch plan served to each rank by DataLoader worker processes.

    plan (training/plan.py)  ->  PlanSampler (this rank's batch requests, from the resume step)
                                 (icpc.ICPCLoader, icpc/loader.py, drives both for users and icpc train)
                             ->  DataLoader workers: BatchDataset reads only each sample's drawn
                                 level (one range read per payload), checks it, decodes it,
                                 maps positions to the strategy, collates
                             ->  pinned memory, non-blocking copy to the GPU (train loop)

Which samples a rank reads is the plan's business; a worker handles every ``num_workers``-th
batch of its rank (DataLoader's order is kept), so the stream is the same for any worker count.
Evaluation (``eval_batches``) deals whole shards to ranks and reads a level's section of each
shard in one request, from the shard's own index: every held-out shard is read once per pass.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from icpc import storage
from icpc.batching import collate
from icpc.contract import INDEX_MEMBER, Spec, decode_npy, decode_payload, positions_for, tokens_member
from icpc.dataset import SampleReader, SampleTable
from icpc.schema import add_aliases
from icpc.training.plan import EpochPlan


@dataclass(frozen=True)
class BatchRequest:
    """What a DataLoader worker needs to build one batch of this rank (small: row numbers, not bytes)."""

    step: int
    level: int
    rows: np.ndarray          # int64: rows of the split's table
    weights: np.ndarray       # float32: 1, or 0 for a padding copy
    global_samples: int       # real samples of the whole global batch (the loss divides by it)


class PlanSampler(torch.utils.data.Sampler):
    """This rank's batch requests of the current plan, from ``start`` (a resumed run's next step)."""

    def __init__(self, rank: int):
        self.rank, self.plan, self.start, self.stop = rank, None, 0, 0

    def set_plan(self, plan: EpochPlan, start: int = 0, stop: int | None = None) -> None:
        """Serve steps ``start`` to ``stop`` (default: the plan's end) of ``plan``."""
        self.plan, self.start = plan, start
        self.stop = plan.steps if stop is None else min(stop, plan.steps)

    def __len__(self) -> int:
        return 0 if self.plan is None else max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[BatchRequest]:
        if self.plan is None:
            raise RuntimeError("PlanSampler has no plan: call set_plan(plan) first (icpc.ICPCLoader does)")
        for s in range(self.start, self.stop):
            rows, weights = self.plan.rank_rows(s, self.rank)
            yield BatchRequest(s, int(self.plan.levels[s]), rows, weights, len(self.plan.rows[s]))


class BatchDataset(torch.utils.data.Dataset):
    """A BatchRequest -> a collated batch, in a DataLoader worker (map-style, one item = one batch).

    A skipped sample (truncated shard, corrupt payload) leaves the batch; a batch left empty
    gets one zero sample of weight 0, so the rank still takes part in the step. The batch's fields
    are those of ``icpc.schema``: ``aliases`` adds the hf / timm names, ``keys`` (the split's keys,
    by row) adds ``keys``.
    """

    def __init__(self, table: SampleTable, spec: Spec, shared_positions: dict[int, np.ndarray], strategy: str,
                 merge_gap: int = 0, aliases: tuple[str, ...] = (), keys: Sequence[str] | None = None):
        self.table, self.spec, self.shared, self.strategy, self.merge_gap = table, spec, shared_positions, strategy, merge_gap
        self.aliases, self.keys = aliases, keys
        self._reader: SampleReader | None = None
        self._pid = -1

    @property
    def reader(self) -> SampleReader:
        if self._reader is None or self._pid != os.getpid():  # one per worker process (file handles)
            self._reader, self._pid = SampleReader(self.table, self.spec, self.shared, self.merge_gap), os.getpid()
        return self._reader

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, req: BatchRequest) -> dict[str, Any]:
        reader = self.reader
        before_skipped, before_read, before_payload = sum(reader.skipped.values()), reader.io.bytes_read, reader.payload_bytes
        got = reader.read(req.rows, np.full(len(req.rows), req.level))
        grid = self.spec.ladder[req.level].grid
        samples = []
        for row, weight, item in zip(req.rows, req.weights, got):
            if item is None:
                continue
            tokens, positions = item
            samples.append({"tokens": tokens, "label": int(self.table.label[row]), "level": req.level,
                            "row": int(row), "weight": float(weight), "key": self.keys[row] if self.keys is not None else "",
                            "positions": positions_for(self.strategy, self.spec.reference_grid, grid, positions)})
        if not samples:
            samples.append(self._empty(req.level))
        batch = collate(samples)
        if self.keys is None:
            del batch["keys"]
        if self.aliases:
            add_aliases(batch, self.spec, self.aliases)
        batch.update(step=req.step, global_samples=req.global_samples,
                     skipped=sum(reader.skipped.values()) - before_skipped,
                     bytes_read=reader.io.bytes_read - before_read, payload_bytes=reader.payload_bytes - before_payload)
        return batch

    def _empty(self, level: int) -> dict[str, Any]:
        """A weight-0 stand-in of the level's shape (zeros), for a batch whose samples were all skipped."""
        n = self.spec.ladder[level].tokens if self.spec.ladder[level].grid else 2
        positions = self.shared.get(level, np.arange(n, dtype=np.int32))
        return {"tokens": np.zeros((len(positions), *self.spec.token_shape), dtype=self.spec.token_dtype),
                "positions": positions_for(self.strategy, self.spec.reference_grid, self.spec.ladder[level].grid,
                                           positions),
                "label": 0, "level": level, "row": -1, "weight": 0.0}


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def _worker_init(worker_id: int) -> None:
    """A stop request is the rank's to handle: torchrun signals the rank's whole process group, and a
    worker that died of it would abort the step the rank is finishing before its checkpoint. So a
    worker leaves that group; it still exits with its rank (torch's worker loop watches its parent)."""
    os.setpgid(0, 0)


def default_workers(local_world: int) -> int:
    """DataLoader workers per rank: the cores this rank has beyond its own (0 to 8).

    Loading is light (one pread, a zlib decompress and a copy per sample: ~26,000 samples/s in
    one process on this project's demo data, 40x what a CPU rank trains), so a worker pays only
    where a core would otherwise idle; on a 2-core machine with 2 ranks a worker process
    competes with training for the CPU and raised the data wait from 2.2% to 5.6%
    (bench/loader.py). On a GPU node the rank's core drives the GPU and workers decode.
    """
    return max(0, min(8, (os.cpu_count() or 1) // max(1, local_world) - 1))


def make_loader(dataset: BatchDataset, sampler: PlanSampler, workers: int, prefetch: int, pin_memory: bool):
    """The DataLoader: ``workers`` persistent processes, ``prefetch`` batches each ahead, pinned memory (for a GPU)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers, collate_fn=_identity,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory, persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None)


# ----------------------------------------------------------------------------- evaluation by shard


def shard_index(location: str) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """A shard's own index (``index.json``) and its members' (data offset, size), from the tar headers."""
    with storage.open_read(location) as f, tarfile.open(fileobj=f, mode="r:") as tf:
        members = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
        if INDEX_MEMBER not in members:
            raise ValueError(f"{location} has no {INDEX_MEMBER}: not a level-major ICPC shard")
        index = json.loads(tf.extractfile(INDEX_MEMBER).read())
    return index, members


def eval_batches(shards: Sequence[str], spec: Spec, level: int, *, batch_size: int, strategy: str,
                 rank: int = 0, world: int = 1, limit: int = 0) -> Iterator[dict[str, Any]]:
    """Every sample of ``shards`` at one level, shard by shard; shard i goes to rank i % world.

    Each shard's level section is read in one request (the level's bytes only). ``limit`` stops
    after that many samples (over all shards, counted in order, before dealing).
    """
    grid = spec.ladder[level].grid
    seen = 0
    pending: list[dict[str, Any]] = []
    for i, location in enumerate(shards):
        if limit and seen >= limit:
            break
        index, members = shard_index(location)
        n = index["samples"] if not limit else min(index["samples"], limit - seen)
        seen += index["samples"]
        if i % world != rank:
            continue
        lv = index["levels"][level]
        shared = (decode_npy(_read_member(location, members[lv["positions"]])) if lv.get("positions") else None)
        start, size = members[tokens_member(level)]
        blob = storage.read_ranges(location, [(start, start + size)])[0]
        offsets = np.concatenate([[0], np.cumsum(lv["size"])])
        for j in range(n):
            lo = int(offsets[j])
            tokens, positions = decode_payload(blob[lo:lo + lv["size"][j]], lv["tokens"][j], spec.token_dtype,
                                               spec.token_shape, shared)
            pending.append({"tokens": tokens, "label": index["labels"][j], "level": level, "key": index["keys"][j],
                            "positions": positions_for(strategy, spec.reference_grid, grid, positions)})
            if len(pending) == batch_size:
                yield collate(pending)
                pending = []
    if pending:
        yield collate(pending)


def _read_member(location: str, member: tuple[int, int]) -> bytes:
    start, size = member
    return storage.read_ranges(location, [(start, start + size)])[0]

