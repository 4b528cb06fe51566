"""Who am I in the job: rank and world size from torchrun, Ray Train or nothing; the process group; collectives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_world(env: dict[str, str] | None = None) -> World:
    """Read torchrun's (and Ray Train's, which sets the same variables) RANK/WORLD_SIZE/LOCAL_RANK."""
    env = os.environ if env is None else env
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                 int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))


def setup(world: World, timeout_s: float = 300.0):
    """Join the process group (nccl on GPU, gloo on CPU) unless a launcher (Ray Train) already did.

    ``timeout_s``: a collective that waits longer than this fails (a dead or stuck peer) instead of
    hanging. Returns (device to train on, whether this call created the group and so must destroy it).
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    device = torch.device(f"cuda:{world.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = world.size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return device, owns_group


def teardown() -> None:
    """Leave the process group together: a rank that destroys its gloo group while another is still
    saving a checkpoint can abort at exit ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: dict, device) -> dict:
    """Sum each value over ranks (one float64 all-reduce); unchanged outside a process group."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def all_reduce_max(values: dict, device) -> dict:
    """The maximum of each value over ranks; unchanged outside a process group."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(values, t.tolist()))


def gather(obj: Any, world: World) -> list[Any]:
    """``obj`` of every rank, in rank order (on every rank)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
