"""Checkpoint I/O and rebuilding a trained model from one, shared by training, evaluation, calibration and serving.

Checkpoints are read and written through the storage layer (a path or an object-store URL);
they load with ``torch.load(..., weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

from icpc import storage
from icpc.config import TrainConfig, from_dict
from icpc.contract import Spec
from icpc.models import ModelPluginError, build_model

__all__ = ["build_model", "load_checkpoint", "load_model", "save_checkpoint"]  # build_model: icpc.models's


def load_checkpoint(location: str) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    import torch

    if not storage.exists(location):
        raise FileNotFoundError(f"checkpoint {location} not found; train one with 'icpc train'")
    with storage.open_read(location) as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def save_checkpoint(state: dict[str, Any], location: str) -> int:
    """Write ``state`` atomically (temp + rename, or one upload); returns its size in bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(location, buf.getvalue())
    return buf.tell()


def load_model(checkpoint: str, strategy: str = "", device: str = "cpu"):
    """Rebuild the trained model from a checkpoint; returns (model in eval mode, spec, state).

    ``strategy`` evaluates with another position strategy than the one trained with ("" = that one).
    The model is rebuilt by the plugin the checkpoint names (``model_plugin``; older checkpoints: their
    config's ``model.kind``), without reading its pretrained ``model.weights`` again.
    """
    state = load_checkpoint(checkpoint)
    train_cfg = from_dict(TrainConfig, state["config"])
    if strategy:
        train_cfg = replace(train_cfg, strategy=strategy)
    spec = Spec.from_json(state["spec"])
    try:
        model = build_model(spec, train_cfg.model, len(state["classes"]), train_cfg.strategy, pretrained=False)
    except ModelPluginError as exc:
        record = state.get("model_plugin") or {"ref": train_cfg.model.name}
        origin = f" from {record['distribution']}" if record.get("distribution") else ""
        raise ModelPluginError(f"checkpoint {checkpoint} was trained with the model plugin {record['ref']!r}"
                               f"{origin} (factory {record.get('factory', '?')}), which is not available here; "
                               f"install it and retry. {exc}") from None
    model.load_state_dict(state["model"])
    return model.to(device).eval(), spec, state
