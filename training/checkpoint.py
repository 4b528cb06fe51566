"""Training checkpoints: what a run saves and where, writing them off the training thread, and resuming.

A checkpoint holds the model, optimizer and scheduler, the optimizer step, every rank's RNG
state and the loader's position (``icpc.ICPCLoader.state_dict()``: epoch, batches done, earlier world
sizes of the epoch; a few integers, never sample bytes), the resolved config, the data spec and the
dataset's identity. Rank 0 writes it in a background thread (the other ranks go on after the one
collective that gathers the RNG states), atomically through the storage layer (temp + rename,
or one upload: no hard links), as ``OUTPUT/last.pt`` and ``OUTPUT/checkpoints/step-NNNNNNNN.pt``
(the newest ``keep`` of those are kept).
"""

from __future__ import annotations

import io
import random
import threading
from typing import Any

import torch

from icpc import storage
from icpc.modelio import load_checkpoint

CHECKPOINT = "last.pt"
HISTORY = "checkpoints"
# Config fields that shape the model or the data stream: a resumed run must keep them.
RESUME_FIELDS = ("seed", "baseline", "level_weights", "level_weights_end", "anneal_start", "final_level0_epochs", "strategy", "batch_size", "batch_tokens", "grad_accum",
                 "shuffle_window", "length_bucket", "model")


def check_resume(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Refuse to resume with settings or data that would make a different run, naming both values."""
    diffs = [f"{k}: checkpoint has {saved['config'].get(k)!r}, this run has {current['config'][k]!r}"
             for k in RESUME_FIELDS if saved["config"].get(k) != current["config"][k]]
    if saved.get("dataset") and saved["dataset"] != current["dataset"]:
        diffs.append(f"dataset: checkpoint trained on {saved['dataset']}, this run reads {current['dataset']}")
    if diffs:
        raise ValueError(f"--resume from {path} would not continue the same run:\n  " + "\n  ".join(diffs)
                         + "\n  pass the checkpoint's values and data, or train into a new --output")


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """``check_resume`` on configs alone."""
    check_resume({"config": saved}, {"config": current, "dataset": None}, path)


def rng_state() -> dict[str, Any]:
    """This rank's random streams (dropout, Python's random)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]  # torch.load gives the saved tuple back as lists in places
    random.setstate((version, tuple(internal), gauss))


def snapshot(module_or_optimizer) -> dict[str, Any]:
    """A CPU copy of a state dict that later training steps cannot change (the writer thread saves it)."""
    def copy(x):
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", copy=True)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(copy(v) for v in x)
        return x

    return copy(module_or_optimizer.state_dict())


class Checkpointer:
    """Writes checkpoints (rank 0) in a background thread, one at a time; ``wait`` joins the last one.

    ``seconds`` of the last write (serialise + store) and ``size`` are kept for the run's report.
    """

    def __init__(self, out: str, keep: int):
        self.out, self.keep = out, keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.seconds, self.size, self.last_path = 0.0, 0, ""

    def save(self, state: dict[str, Any], step: int) -> None:
        """Start writing ``state`` (already a snapshot) as last.pt and checkpoints/step-STEP.pt."""
        self.wait()  # one write in flight: a slow store makes training wait here, not lose checkpoints
        self._thread = threading.Thread(target=self._write, args=(state, step), name="icpc-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing a checkpoint to {self.out} failed: {error}") from error

    def _write(self, state: dict[str, Any], step: int) -> None:
        import time

        try:
            t0 = time.perf_counter()
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
            history = storage.join(self.out, HISTORY, f"step-{step:08d}.pt")
            if self.keep:
                storage.makedirs(storage.join(self.out, HISTORY))
                storage.write_bytes(history, data)
            storage.write_bytes(storage.join(self.out, CHECKPOINT), data)
            kept = sorted(storage.glob(storage.join(self.out, HISTORY), "step-*.pt"))
            for old in kept[:max(0, len(kept) - self.keep)]:
                storage.remove(old)
            self.seconds, self.size, self.last_path = time.perf_counter() - t0, len(data), history
        except BaseException as exc:  # noqa: BLE001 - re-raised on the training thread by wait()
            self._error = exc


def latest(out: str, path: str = "") -> tuple[dict[str, Any] | None, str]:
    """(checkpoint, where) a resumed run continues from: ``path`` if given, else OUTPUT/last.pt; None if none."""
    where = path or storage.join(out, CHECKPOINT)
    if not storage.exists(where):
        if path:
            raise FileNotFoundError(f"checkpoint {path} not found")
        return None, where
    return load_checkpoint(where), where
