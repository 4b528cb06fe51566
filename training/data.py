"""The training stream: generator stages over samples, from this rank's shards to one-level batches.

Every stage takes an iterator and returns one (the webdataset style), so each is testable on a
plain list. The level of a sample in an epoch is ``draw_level(seed, epoch, key)``; which shards a
rank reads is ``assign_shards(seed, epoch, rank, world)``: both pure, so a resumed run sees the
stream it would have seen.
"""

from __future__ import annotations

import itertools
import random
import warnings
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from icpc.batching import collate
from icpc.contract import Spec, assign_shards, decode_sample, draw_level, positions_for, unit_hash


def pick_levels(samples: Iterable[dict[str, Any]], seed: int, epoch: int, weights: Sequence[float]) -> Iterator[dict]:
    """Raw webdataset samples -> decoded samples at their drawn level (only that level is decoded)."""
    for raw in samples:
        level = draw_level(seed, epoch, raw["__key__"], weights)
        try:
            sample = decode_sample(raw, [level])
        except (KeyError, ValueError) as exc:  # a truncated shard's partial last sample
            warnings.warn(f"skipping sample {raw.get('__key__')!r} of {raw.get('__url__')}: {exc}")
            continue
        tokens, positions = sample["levels"][level]
        yield {"key": sample["key"], "label": sample["label"], "level": level, "tokens": tokens, "positions": positions}


def fixed_level(samples: Iterable[dict[str, Any]], level: int) -> Iterator[dict]:
    """Raw samples -> decoded samples at ``level`` (evaluation)."""
    return pick_levels(samples, 0, 0, [0.0] * level + [1.0])


def apply_strategy(samples: Iterable[dict[str, Any]], spec: Spec, strategy: str) -> Iterator[dict]:
    """Replace the stored (consistent) positions by those of ``strategy`` (DESIGN contract 2)."""
    for s in samples:
        grid = spec.ladder[s["level"]].grid
        s["positions"] = positions_for(strategy, spec.reference_grid, grid, s["positions"])
        yield s


def batch_by_level(samples: Iterable[dict[str, Any]], batch_size: int, length_bucket: int = 0) -> Iterator[dict]:
    """Group samples into batches of one level each (equal length at a level, no padding).

    A batch is emitted as soon as its group has ``batch_size`` samples; the remainders are
    flushed, one partial batch per group, when the stream ends. With ``length_bucket`` > 0 a group
    is (level, token count // length_bucket), so variable-length samples (text) are batched with
    others of about their length and pad little; grid modalities have one length per level, so
    their batches are the same either way.
    """
    buffers: dict[tuple[int, int], list[dict]] = {}
    for s in samples:
        group = (s["level"], len(s["tokens"]) // length_bucket if length_bucket else 0)
        buf = buffers.setdefault(group, [])
        buf.append(s)
        if len(buf) == batch_size:
            yield collate(buf)
            buffers[group] = []
    for group in sorted(buffers):
        if buffers[group]:
            yield collate(buffers[group])


def steps_per_epoch(train_samples: int, world: int, batch_size: int) -> int:
    """Batches every rank runs per epoch: one pass over the data, the same count on every rank."""
    return max(1, train_samples // (world * batch_size))


def shard_urls(shards: Sequence[str], seed: int, epoch: int, rank: int, world: int, repeat: int = 0) -> list[str]:
    return [shards[i] for i in assign_shards(len(shards), seed, epoch, rank, world, repeat)]


def raw_samples(urls: Sequence[str]) -> Iterator[dict]:
    """Raw samples (member -> bytes) of ``urls`` in order (split across DataLoader workers, if any).

    The node split is already done (``shard_urls``), so the pipeline has no node splitter;
    a truncated shard's partial last sample is dropped by ``decode_sample`` with a warning.
    """
    import webdataset as wds

    return iter(wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.split_by_worker,
                                 wds.tarfile_to_samples(handler=wds.warn_and_continue)))


def train_batches(shards: Sequence[str], spec: Spec, *, seed: int, epoch: int, rank: int, world: int,
                  batch_size: int, weights: Sequence[float], strategy: str, shuffle_buffer: int,
                  length_bucket: int = 0) -> Iterator[dict]:
    """One rank's batches for ``epoch``; repeats its shards (next pass, new order) if it runs dry.

    Use with ``itertools.islice(..., steps_per_epoch(...))`` so every rank runs the same count.
    A pass that yields no batch at all raises: repeating it would spin forever while the other
    ranks wait in the next collective.
    """
    for rep in itertools.count():
        urls = shard_urls(shards, seed, epoch, rank, world, rep)
        rng = random.Random(int(unit_hash("shuffle", seed, epoch, rep, rank) * 2**32))
        stream = shuffle(raw_samples(urls), shuffle_buffer, rng)
        stream = apply_strategy(pick_levels(stream, seed, epoch, weights), spec, strategy)
        produced = False
        for batch in batch_by_level(stream, batch_size, length_bucket):
            produced = True
            yield batch
        if not produced:
            raise RuntimeError(f"rank {rank}: shards {list(urls)} hold no readable sample; check them "
                               f"(tar -tf) or rebuild the dataset with 'icpc compress'")


def shuffle(samples: Iterable[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """webdataset's buffer shuffle with an explicit, seeded ``rng``."""
    import webdataset as wds

    return wds.shuffle(bufsize, initial=bufsize, rng=rng)(iter(samples))


def eval_batches(shards: Sequence[str], spec: Spec, level: int, *, batch_size: int, strategy: str,
                 rank: int = 0, world: int = 1, limit: int = 0) -> Iterator[dict]:
    """All samples of ``shards`` at one level, in order; sample i goes to rank i % world."""
    stream = raw_samples(shards)
    if limit:
        stream = itertools.islice(stream, limit)
    stream = (s for i, s in enumerate(stream) if i % world == rank)
    return batch_by_level(apply_strategy(fixed_level(stream, level), spec, strategy), batch_size)
