"""Pretrained weights for a model plugin (``model.weights``): read through icpc.storage, never unpickled.

    --set model.weights=/models/vit_tiny.safetensors     # or .pth / .pt / .bin, a file:// or s3:// URL

``.safetensors`` files load with safetensors; the others with ``torch.load(weights_only=True)``
(tensors and plain containers only). Wrappers are unwrapped the way timm's own loader does
(``state_dict``, ``model``, ``module.`` prefixes), and an ICPC checkpoint gives its ``model``.
"""

from __future__ import annotations

import io
from typing import Any

from icpc import storage

SAFETENSORS = (".safetensors",)
TORCH_FILES = (".pth", ".pt", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema")


def read_weights(location: str) -> dict[str, Any]:
    """``{name: tensor}`` from a weights file at ``location`` (path or URL), on the CPU."""
    import torch

    name = storage.basename(location).lower()
    if not storage.exists(location):
        raise FileNotFoundError(f"model.weights={location!r}: no such file (a path or a URL such as s3://b/k)")
    if not name.endswith(SAFETENSORS + TORCH_FILES):
        raise ValueError(f"model.weights={location!r}: expected a {'/'.join(SAFETENSORS + TORCH_FILES)} file "
                         f"(safetensors, or a torch.save state dict)")
    data = storage.read_bytes(location)
    if name.endswith(SAFETENSORS):
        from safetensors.torch import load

        return load(data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for a file it will not load safely
        raise ValueError(f"model.weights={location!r} does not load with torch.load(weights_only=True) "
                         f"(tensors and plain containers only): {exc}") from None
    return unwrap_state_dict(state, location)


def unwrap_state_dict(state: Any, location: str = "weights") -> dict[str, Any]:
    """The tensor dict inside ``state`` (a wrapper dict, an ICPC checkpoint), ``module.`` prefixes removed."""
    while isinstance(state, dict) and not _all_tensors(state):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{location}: holds no state dict (keys {sorted(state)[:8]}); save the model's "
                             f"state_dict() or a safetensors file")
        state = inner
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{location}: holds {type(state).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _all_tensors(d: dict) -> bool:
    import torch

    return all(isinstance(v, torch.Tensor) for v in d.values())
