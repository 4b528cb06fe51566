"""Model building and checkpoint I/O, shared by training, evaluation, calibration and serving.

Checkpoints are read and written through the storage layer (a path or an object-store URL);
they load with ``torch.load(..., weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

from icpc import storage
from icpc.config import ModelConfig, TrainConfig, from_dict
from icpc.contract import Spec


def build_model(spec: Spec, model: ModelConfig, num_classes: int, strategy: str = "consistent"):
    """The classifier for ``spec``: this project's transformer, or fine-tuned MiniLM (text, extra ``minilm``).

    The modality plugin says how a token is embedded (a vector of ``token_dim`` values, or an id).
    """
    from icpc.pipeline.modalities import get_modality

    if model.kind == "minilm":  # pretrained text encoder (optional extra); same forward signature
        from icpc.training.minilm import MiniLMClassifier

        return MiniLMClassifier(spec, model, num_classes, strategy)
    from icpc.training.model import TokenClassifier

    return TokenClassifier(spec, model, num_classes, strategy, embedding=get_modality(spec.modality).embedding)


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
    """
    state = load_checkpoint(checkpoint)
    train_cfg = from_dict(TrainConfig, state["config"])
    if strategy:
        train_cfg = replace(train_cfg, strategy=strategy)
    spec = Spec.from_json(state["spec"])
    model = build_model(spec, train_cfg.model, len(state["classes"]), train_cfg.strategy)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), spec, state
