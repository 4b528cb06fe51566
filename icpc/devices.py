"""Where a model runs: the device a name means, the autocast dtype, inference mode, host-to-device copies.

Shared by evaluation, calibration and the Serve model replicas, so all three run a model the
same way on the same device.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

DEVICES = "auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")   # auto: bf16 on a GPU that has it (else fp16), fp32 on a CPU


def resolve_device(name: str = "auto") -> str:
    """The torch device for ``name``: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``.

    An explicit ``cuda`` / ``cuda:N`` that this process cannot use is an error naming the fix, not a
    silent fall-back to the CPU (a Ray replica sees a GPU only when it reserved one: ``num_gpus``).
    """
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}, but torch sees no GPU here (a Ray replica sees one only with "
                             f"num_gpus > 0); use device=auto or cpu")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"device={name!r}: this process sees {torch.cuda.device_count()} GPU(s), cuda:0.."
                             f"cuda:{torch.cuda.device_count() - 1}")
        return name
    raise ValueError(f"device={name!r}: choose {DEVICES}")


def autocast_dtype(device: str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None = plain fp32.

    ``auto``: bf16 on a GPU that supports it (fp16 on older ones, whose range is narrower but logits
    of a classifier fit), fp32 on a CPU, where bf16 matmuls are slower than fp32 without AMX.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {PRECISIONS}")
    if precision == "fp32" or (precision == "auto" and not device.startswith("cuda")):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


@contextlib.contextmanager
def inference(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast to ``dtype`` (None: no autocast)."""
    cast = contextlib.nullcontext() if dtype is None else torch.autocast(device.split(":")[0], dtype=dtype)
    with torch.inference_mode(), cast:
        yield


def to_device(batch: dict[str, Any], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(tokens, positions, padding_mask) of a ``collate`` batch on ``device``.

    On a GPU the host tensors are pinned first so the copies are asynchronous (``non_blocking``)
    and overlap with whatever the GPU is still computing; on a CPU nothing is copied.
    """
    tensors = (batch["tokens"], batch["positions"], batch["padding_mask"])
    if device == "cpu":
        return tensors
    return tuple(None if t is None else t.pin_memory().to(device, non_blocking=True) for t in tensors)


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so a wall-clock timing covers it (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def model_device(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).device)
