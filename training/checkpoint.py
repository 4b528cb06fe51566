"""Training checkpoints: what a run saves, where, and how a resumed run checks and restores it."""

from __future__ import annotations

import random
from typing import Any

import torch

from icpc import storage
from icpc.modelio import load_checkpoint, save_checkpoint

CHECKPOINT = "last.pt"
# Config fields that shape the model or the data stream: a resumed run must keep them.
RESUME_FIELDS = ("seed", "baseline", "level_weights", "strategy", "batch_size", "grad_accum", "shuffle_buffer", "model")


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Refuse to resume with settings that would make a different run, naming both values."""
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current[k]!r}"
             for k in RESUME_FIELDS if saved.get(k) != current[k]]
    if diffs:
        raise ValueError(f"--resume from {path} would not continue the same run:\n  " + "\n  ".join(diffs)
                         + "\n  pass the checkpoint's values, or train into a new --output")


def rng_state() -> dict[str, Any]:
    """This rank's random streams (dropout, Python's random)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]  # torch.load gives the saved tuple back as lists in places
    random.setstate((version, tuple(internal), gauss))


def write(state: dict[str, Any], out: str, epoch: int) -> None:
    """``last.pt`` (what --resume and evaluation read) and ``epoch-NNN.pt``, each written atomically."""
    save_checkpoint(state, storage.join(out, CHECKPOINT))
    save_checkpoint(state, storage.join(out, f"epoch-{epoch:03d}.pt"))


def latest(out: str) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from, or None when ``out`` has none."""
    path = storage.join(out, CHECKPOINT)
    return load_checkpoint(path) if storage.exists(path) else None
