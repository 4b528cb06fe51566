"""``icpc.ICPCLoader``: this rank's batches of an ICPC dataset, resumable mid-epoch, for your own training loop.

    loader = icpc.ICPCLoader("runs/data", batch_size=64, seed=0)   # rank and world from torch.distributed
    model = icpc.build_model(loader.spec, icpc.config.ModelConfig(), loader.num_classes)
    for epoch in range(loader.epoch, epochs):                     # loader.epoch: 0, or where a state left off
        loader.set_epoch(epoch)
        for batch in loader:                                      # len(loader) batches, the same on every rank
            logits = model(batch["tokens"], batch["positions"], batch["level"], batch["padding_mask"])
            icpc.plan_cross_entropy(logits, batch).backward()
            ...
            torch.save({"model": ..., "loader": loader.state_dict()}, path)   # a few integers

Every epoch has a plan (``icpc.training.plan``): each sample at its (seed, epoch, key) level, global
batches of one level, every rank the same number of steps. DataLoader worker processes read only
each sample's drawn level and collate (``icpc.training.data``); ``icpc train`` runs on this class.
``state_dict()`` counts the batches handed to the caller, so a loop restarted from its checkpoint
continues with the next one; loaded at another world size, the rest of the epoch is re-planned and
each untrained sample is trained once (elastic resume).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from icpc.contract import STRATEGIES, Spec, draw_levels
from icpc.dataset import Dataset, SampleTable, open_dataset
from icpc.schedule import LevelSchedule
from icpc.schema import check_aliases

# Settings that shape the stream: a state saved under other values would resume a different stream.
STREAM_FIELDS = ("split", "seed", "batch_size", "batch_tokens", "shuffle_window", "length_bucket", "schedule",
                 "fingerprint")


@dataclass
class LoaderState:
    """Where the loader is in the deterministic stream (a few integers, never sample bytes).

    epoch: the epoch in progress; batches: batches this rank has been given of the current plan
    segment; segments: ``[world, batches]`` of earlier segments of this epoch that ran with another
    world size (elastic resume: the current plan covers what they left).
    """

    epoch: int = 0
    batches: int = 0
    segments: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LoaderState":
        return cls(int(d["epoch"]), int(d["batches"]), [list(map(int, s)) for s in d.get("segments", [])])

    def for_world(self, saved_world: int, world: int) -> "LoaderState":
        """This state continued by ``world`` ranks (it was saved by ``saved_world``)."""
        if saved_world == world or not self.batches:
            return LoaderState(self.epoch, self.batches, [list(s) for s in self.segments])
        return LoaderState(self.epoch, 0, [*self.segments, [saved_world, self.batches]])


def epoch_plan(table: SampleTable, spec: Spec, epoch: int, world: int, *, seed: int, batch_size: int,
               schedule: LevelSchedule, batch_tokens: int = 0, shuffle_window: int = 16384, length_bucket: int = 8,
               segments: Sequence[Sequence[int]] = ()):
    """The plan of ``epoch`` for ``world`` ranks; after ``segments`` (earlier world sizes of this epoch and
    the batches they ran), the plan of the samples they left. A pure function of its arguments."""
    from icpc.training.plan import plan_epoch, remaining_rows

    levels = draw_levels(seed, epoch, table.key_hash, schedule.at(epoch, len(spec.ladder)))
    tokens = table.tokens[np.arange(len(table)), levels]
    lengths = tokens if not spec.ladder[0].grid else None

    def plan(w: int, rows=None):
        return plan_epoch(seed, epoch, w, batch_size, levels, table.shard, lengths, length_bucket, shuffle_window,
                          rows, batch_tokens, tokens)

    rows = None
    for w, done in segments:
        rows = remaining_rows(plan(w, rows), done)
    return plan(world, rows)


def resolve_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int]:
    """(rank, world size, ranks on this node): explicit arguments, else torch.distributed, else torchrun's
    RANK / WORLD_SIZE / LOCAL_WORLD_SIZE, else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return rank, world_size, max(1, min(local, world_size))


def _schedule_identity(schedule: LevelSchedule) -> dict[str, Any]:
    """The schedule's fields that change draws; ``epochs`` only where it moves the weights (a run may be
    extended)."""
    out = asdict(schedule)
    if not schedule.weights_end and not schedule.final_level0_epochs:
        out.pop("epochs")
    return out


class ICPCLoader:
    """This rank's batches of one split, epoch by epoch (see the module doc; batch fields: ``icpc.schema``).

    data: a dataset URL (local path, ``file://``, ``s3://``, ``gs://``) written by ``icpc compress``, or
        an opened ``icpc.dataset.Dataset``.
    split: train, val or test. batch_size: samples per rank (the largest of a step when batch_tokens
        is set). batch_tokens > 0: token-budget batches (as many samples as fit, per level).
    seed: drives level draws and shuffling. schedule: level probabilities per epoch (default uniform;
        ``LevelSchedule(baseline=True)`` for level 0 only). strategy: position strategy (consistent,
        corner, renumber, interpolate).
    rank, world_size: default from torch.distributed, then the environment (torchrun sets them).
    num_workers: DataLoader worker processes (-1: the rank's spare cores, 0-8; 0: in this process);
        prefetch: batches each worker prepares ahead; pin_memory: default when CUDA is available.
    shuffle_window: samples shuffled together (whole shards); length_bucket: text batches group
        samples whose lengths agree // this; read_merge_gap: bytes between payloads of one shard
        fetched in one request. max_batches > 0: cap the batches per epoch (smoke tests).
    aliases: add Hugging Face ("hf") and/or timm NaFlex ("timm") field names. keys: add sample keys.
    """

    def __init__(self, data: str | Dataset, *, split: str = "train", batch_size: int = 64, batch_tokens: int = 0,
                 seed: int = 0, schedule: LevelSchedule | None = None, strategy: str = "consistent",
                 rank: int | None = None, world_size: int | None = None, num_workers: int = -1, prefetch: int = 4,
                 pin_memory: bool | None = None, shuffle_window: int = 16384, length_bucket: int = 8,
                 read_merge_gap: int = 0, max_batches: int = 0, aliases: Sequence[str] = (), keys: bool = False):
        import torch

        from icpc.training.data import BatchDataset, PlanSampler, default_workers, make_loader

        errors = [f"{name}={value}: must be {rule}" for name, value, rule in (
            ("batch_size", batch_size, "positive"), ("prefetch", prefetch, "positive"),
            ("batch_tokens", batch_tokens, ">= 0"), ("shuffle_window", shuffle_window, ">= 0"),
            ("length_bucket", length_bucket, ">= 0"), ("read_merge_gap", read_merge_gap, ">= 0"),
            ("max_batches", max_batches, ">= 0"), ("num_workers", num_workers, ">= -1 (-1 = auto)"))
            if value < (1 if rule == "positive" else -1 if name == "num_workers" else 0)]
        if strategy not in STRATEGIES:
            errors.append(f"strategy={strategy!r}: choose one of {STRATEGIES}")
        if errors:
            raise ValueError("ICPCLoader: " + "; ".join(errors))
        self.dataset = open_dataset(data) if isinstance(data, str) else data
        self.spec: Spec = self.dataset.spec
        self.table = self.dataset.table(split)
        if not len(self.table):
            raise ValueError(f"dataset {self.dataset.location} has no {split!r} samples (splits: {self.dataset.counts})")
        self.schedule = schedule or LevelSchedule()
        self.schedule.check(len(self.spec.ladder))
        check_aliases(aliases, self.spec)
        self.split, self.seed, self.batch_size, self.batch_tokens = split, seed, batch_size, batch_tokens
        self.strategy, self.shuffle_window, self.length_bucket = strategy, shuffle_window, length_bucket
        self.max_batches = max_batches
        self.rank, self.world_size, local = resolve_world(rank, world_size)
        self.num_workers = default_workers(local) if num_workers < 0 else num_workers
        self._state = LoaderState()
        self._plans: dict[tuple, Any] = {}
        self._sampler = PlanSampler(self.rank)
        self._loader = make_loader(
            BatchDataset(self.table, self.spec, self.dataset.shared_positions, strategy, read_merge_gap,
                         aliases=tuple(aliases), keys=self.table.keys() if keys else None),
            self._sampler, self.num_workers, prefetch,
            torch.cuda.is_available() if pin_memory is None else pin_memory)

    # ------------------------------------------------------------------ what users read

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def epoch(self) -> int:
        """The epoch in progress (or the next one, once a pass has finished)."""
        return self._state.epoch

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch (plan segment) already handed out."""
        return self._state.batches

    @property
    def plan(self):
        """The current epoch's plan (``icpc.training.plan.EpochPlan``) for this world size."""
        key = (self._state.epoch, tuple(map(tuple, self._state.segments)))
        if key not in self._plans:
            self._plans = {key: epoch_plan(
                self.table, self.spec, self._state.epoch, self.world_size, seed=self.seed,
                batch_size=self.batch_size, schedule=self.schedule, batch_tokens=self.batch_tokens,
                shuffle_window=self.shuffle_window, length_bucket=self.length_bucket,
                segments=self._state.segments)}
        return self._plans[key]

    def __len__(self) -> int:
        """Batches per rank in a whole pass of the current epoch (of its re-planned rest after an elastic resume)."""
        steps = self.plan.steps
        return min(steps, self.max_batches) if self.max_batches else steps

    def set_epoch(self, epoch: int) -> None:
        """Go to ``epoch``; the position inside it is kept when it is the epoch in progress (a resumed state)."""
        if epoch < 0:
            raise ValueError(f"set_epoch({epoch}): epochs count from 0")
        if epoch != self._state.epoch:
            self._state = LoaderState(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch's batches; after the last one the loader moves to the next epoch."""
        steps, start = len(self), self._state.batches
        self._sampler.set_plan(self.plan, start, steps)
        batches = iter(self._loader)
        for _ in range(start, steps):
            batch = next(batches)
            self._state.batches += 1
            yield batch
        self._state = LoaderState(self._state.epoch + 1)

    # ------------------------------------------------------------------ resume

    def stream(self) -> dict[str, Any]:
        """The settings that shape the stream (a state is only valid under the same ones)."""
        return {"split": self.split, "seed": self.seed, "batch_size": self.batch_size,
                "batch_tokens": self.batch_tokens, "shuffle_window": self.shuffle_window,
                "length_bucket": self.length_bucket, "schedule": _schedule_identity(self.schedule),
                "fingerprint": self.dataset.fingerprint}

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from: epoch, batches handed out, earlier world sizes, plus the stream settings.

        The same on every rank (they run the same steps), plain ints and lists: ``torch.load(...,
        weights_only=True)`` reads it.
        """
        return {**self._state.to_json(), "world_size": self.world_size, "stream": self.stream()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` output, at this world size (another one re-plans the epoch's rest).

        Refuses a state saved under other stream settings (seed, batch size, schedule, data ...), naming them.
        """
        saved = state.get("stream")
        if saved:
            mine = self.stream()
            diffs = [f"{k}: state has {saved.get(k)!r}, this loader has {mine[k]!r}" for k in STREAM_FIELDS
                     if saved.get(k) != mine[k]]
            if diffs:
                raise ValueError("ICPCLoader.load_state_dict: the state belongs to another stream:\n  "
                                 + "\n  ".join(diffs) + "\n  build the loader with the saved settings")
        self._state = LoaderState.from_json(state).for_world(int(state.get("world_size", self.world_size)),
                                                              self.world_size)
