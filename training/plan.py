"""The epoch plan: which samples every rank trains at every step, as a pure function (numpy only).

Each sample's level is ``draw_levels(seed, epoch, key)``. The plan shuffles the split (whole
shards shuffled, then samples within windows of consecutive shards, so the job reads a few
shards at a time), then groups samples by level (and, for variable-length text, by length
bucket) and cuts each group into **global batches** of ``world * batch_size`` samples, ordered by
when they fill up in the shuffled stream. Every rank trains the same level at a step, with
``batch_size`` samples (the global batch dealt in contiguous chunks), so the ranks' steps cost
the same and no rank waits for another's larger level. Each group's last, partial global batch is
dealt as evenly as the ranks allow (sizes differ by at most one): nothing is dropped or repeated.
Where a partial batch has fewer samples than ranks, the ranks left without one train a copy of a
sample of the batch with weight 0 (``padded``), which changes no gradient.

The plan depends only on (seed, epoch, world, batch_size, the samples, their levels and lengths),
so every rank computes the same plan without talking to the others, and a run resumed at step k
trains exactly what it would have. ``remaining_rows`` and ``plan_epoch(rows=...)`` re-plan the
samples an interrupted epoch has not trained yet for another world size (elastic resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Salts of the plan's random streams (numpy default_rng seeds: [seed, epoch, salt, ...]).
_SHARDS, _WINDOW = 0x5A4D, 0x3D1B


@dataclass(frozen=True)
class EpochPlan:
    """The global batches of one epoch: ``rows[s]`` are step s's samples (rows of the split's table)."""

    epoch: int
    world: int
    batch_size: int                  # samples per rank of a full batch (the largest level's, with batch_tokens)
    rows: tuple[np.ndarray, ...]     # per step, int64 rows of the global batch, dealt to ranks in order
    levels: np.ndarray               # int64 (steps,): the level every rank trains at step s
    full: np.ndarray                 # int64 (steps,): samples a full global batch of that step's group holds

    @property
    def steps(self) -> int:
        return len(self.rows)

    def rank_rows(self, step: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, weights) of ``rank`` at ``step``: a contiguous chunk of the global batch, weights 1.

        A rank whose chunk is empty (a partial batch smaller than the world) gets the batch's first
        sample with weight 0.
        """
        g = self.rows[step]
        lo, hi = rank * len(g) // self.world, (rank + 1) * len(g) // self.world
        if hi > lo:
            return g[lo:hi], np.ones(hi - lo, dtype=np.float32)
        return g[:1], np.zeros(1, dtype=np.float32)

    def samples(self) -> int:
        return int(sum(len(g) for g in self.rows))

    def padded(self) -> int:
        """Weight-0 copies this plan trains (ranks left without a sample in a partial batch)."""
        return int(sum(max(0, self.world - len(g)) for g in self.rows))

    def partial_steps(self) -> int:
        return int(sum(len(g) < f for g, f in zip(self.rows, self.full)))


def sample_order(seed: int, epoch: int, shard: np.ndarray, window: int) -> np.ndarray:
    """All rows in this epoch's shuffled order: shards in a seeded order, rows shuffled within windows.

    A window is a run of consecutive shards (in the shuffled shard order) holding at least
    ``window`` samples; 0 or a window of the whole split shuffles everything at once.
    """
    n = len(shard)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    n_shards = int(shard.max()) + 1
    shard_order = np.random.default_rng([seed, epoch, _SHARDS]).permutation(n_shards)
    by_shard = np.argsort(shard, kind="stable")
    starts = np.searchsorted(shard[by_shard], np.arange(n_shards + 1))
    out, buffer, count, w = [], [], 0, 0
    for s in shard_order:
        buffer.append(by_shard[starts[s]:starts[s + 1]])
        count += starts[s + 1] - starts[s]
        if window and count >= window:
            out.append(np.random.default_rng([seed, epoch, _WINDOW, w]).permutation(np.concatenate(buffer)))
            buffer, count, w = [], 0, w + 1
    if buffer:
        out.append(np.random.default_rng([seed, epoch, _WINDOW, w]).permutation(np.concatenate(buffer)))
    return np.concatenate(out).astype(np.int64)


def plan_epoch(seed: int, epoch: int, world: int, batch_size: int, levels: np.ndarray, shard: np.ndarray,
               lengths: np.ndarray | None = None, length_bucket: int = 0, window: int = 0,
               rows: np.ndarray | None = None, batch_tokens: int = 0,
               tokens: np.ndarray | None = None) -> EpochPlan:
    """The epoch's global batches for ``world`` ranks of ``batch_size`` samples each (see the module doc).

    levels, shard: int (n,) per row of the split's table; lengths: tokens per row at its level
    (text), grouped into buckets of ``length_bucket`` tokens when > 0. ``rows``: plan only these
    rows (the rest of an interrupted epoch), in the order the full epoch would have read them.
    ``batch_tokens`` > 0: token-budget batches (as NaViT packs): a rank's batch of a group holds
    as many samples as fit ``batch_tokens`` tokens (``tokens``: per row, its tokens at its level;
    the group's longest sample counts), at least one, so every step costs about the same at every
    level and compressed levels take fewer, larger steps.
    """
    if world < 1 or batch_size < 1:
        raise ValueError(f"world={world} and batch_size={batch_size} must be positive")
    order = sample_order(seed, epoch, np.asarray(shard), window)
    if rows is not None:
        order = order[np.isin(order, rows)]
    group = np.asarray(levels, dtype=np.int64)[order]
    if lengths is not None and length_bucket > 0:
        group = group * (1 << 20) + np.asarray(lengths, dtype=np.int64)[order] // length_bucket
    full, partial = [], []
    for g in np.unique(group):
        where = np.flatnonzero(group == g)              # positions in the stream, ascending
        size = world * batch_size
        if batch_tokens > 0:
            longest = int(np.asarray(tokens)[order[where]].max())
            size = world * max(1, batch_tokens // max(1, longest))
        k = len(where) // size
        for b in range(k):
            pos = where[b * size:(b + 1) * size]
            full.append((int(pos[-1]), order[pos], size))       # emitted when its last sample arrives
        if len(where) > k * size:
            pos = where[k * size:]
            partial.append((int(pos[-1]), order[pos], size))    # flushed at the end of the epoch
    batches = sorted(full, key=lambda b: b[0]) + sorted(partial, key=lambda b: b[0])
    rows_out = tuple(b[1] for b in batches)
    lv = np.asarray(levels, dtype=np.int64)
    return EpochPlan(epoch, world, max([b[2] // world for b in batches], default=batch_size), rows_out,
                     np.array([lv[r[0]] for r in rows_out], dtype=np.int64),
                     np.array([b[2] for b in batches], dtype=np.int64))


def remaining_rows(plan: EpochPlan, next_step: int) -> np.ndarray:
    """Rows ``plan`` has not trained before ``next_step`` (sorted)."""
    if next_step >= plan.steps:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(plan.rows[next_step:]))


def step_cost(plan: EpochPlan, tokens: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per step, the largest rank's cost: sum over its samples of tokens**power (1: linear, 2: attention).

    ``tokens``: per row, its token count at its drawn level. A DDP step lasts as long as its
    slowest rank, so this is what the step costs the job.
    """
    out = np.zeros(plan.steps)
    for s in range(plan.steps):
        out[s] = max(float((tokens[plan.rank_rows(s, r)[0]].astype(np.float64) ** power).sum())
                     for r in range(plan.world))
    return out
