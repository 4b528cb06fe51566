"""The training data plane: the epoch plan served to each rank by DataLoader worker processes.

    plan (training/plan.py)  ->  PlanSampler (this rank's batch requests, from the resume step)
                                 (icpc.ICPCLoader, icpc/loader.py, drives both for users and icpc train)
                             ->  DataLoader workers: BatchDataset reads only each sample's drawn
                                 level (one range read per payload), checks it, decodes it,
                                 maps positions to the strategy, collates
                             ->  pinned memory, non-blocking copy to the GPU (train loop)

Which samples a rank reads is the plan's business; a worker handles every ``num_workers``-th
batch of its rank (DataLoader's order is kept), so the stream is the same for any worker count.
Evaluation (``eval_batches``) deals whole shards to ranks and reads each sample's payload at one
level (one range read each, a shard's reads sent together), offsets from the dataset's index: every
held-out sample is read once per pass, and only at that level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from icpc.batching import collate
from icpc.contract import Spec, positions_for
from icpc.dataset import SampleReader, SampleTable, shard_tables
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


def eval_batches(shards: Sequence[str] | SampleTable, spec: Spec, level: int, *, batch_size: int, strategy: str,
                 rank: int = 0, world: int = 1, limit: int = 0) -> Iterator[dict[str, Any]]:
    """Every sample of ``shards`` at one level, shard by shard; shard i goes to rank i % world.

    ``shards``: shard locations of one dataset (``Dataset.shards``), or a split's ``SampleTable``
    (all its shards). A shard's payloads at ``level`` are read together (one exact range read
    each; the dataset's index gives their offsets). ``limit`` stops after that many samples (over
    all shards, counted in order, before dealing). A sample that does not read back (corrupt
    bytes, a truncated shard) fails the pass, naming the shard.
    """
    if isinstance(shards, SampleTable):
        parts = [(shards, np.flatnonzero(shards.shard == s)) for s in dict.fromkeys(shards.shard.tolist())]
    else:
        parts = shard_tables(list(shards))
    readers: dict[int, tuple[SampleReader, list[str]]] = {}
    grid = spec.ladder[level].grid
    pending: list[dict[str, Any]] = []
    seen = 0
    for i, (table, rows) in enumerate(parts):
        if limit and seen >= limit:
            break
        rows = rows if not limit else rows[:limit - seen]
        seen += len(rows)
        if i % world != rank:
            continue
        if id(table) not in readers:
            readers[id(table)] = (SampleReader(table, spec, table.shared_positions), table.keys())
        reader, keys = readers[id(table)]
        got = reader.read(rows, np.full(len(rows), level))
        if any(item is None for item in got):
            raise ValueError(f"{table.shard_locations[table.shard[rows[0]]]}: {sum(item is None for item in got)} "
                             f"samples did not read back at level {level} ({reader.skipped}); rebuild the dataset "
                             f"with 'icpc compress --overwrite'")
        for row, (tokens, positions) in zip(rows, got):
            pending.append({"tokens": tokens, "label": int(table.label[row]), "level": level, "key": keys[row],
                            "positions": positions_for(strategy, spec.reference_grid, grid, positions)})
            if len(pending) == batch_size:
                yield collate(pending)
                pending = []
    if pending:
        yield collate(pending)
