"""One forward pass over requests of one level: what the Serve model replica, calibration and tests share."""

from __future__ import annotations

import numpy as np

from icpc.batching import collate
from icpc.contract import Spec, positions_for
from icpc.devices import inference, model_device, to_device


def classify(model, spec: Spec, level: int, items: list[tuple[np.ndarray, np.ndarray]],
             dtype=None) -> list[np.ndarray]:
    """Softmax probabilities ``(C,)`` float32 for each ``(tokens, positions)`` of one level: one forward pass.

    Runs where the model is (pinned, non-blocking copies to a GPU; autocast to ``dtype`` if given).
    Positions are the stored (consistent) ones, mapped to the model's strategy as in evaluation; a
    text level of mixed lengths is padded with a padding mask (training's ``collate``).
    """
    import torch


    grid = spec.ladder[level].grid
    batch = collate([{"tokens": tok, "label": 0, "level": level, "key": "",
                      "positions": positions_for(model.strategy, spec.reference_grid, grid, pos)}
                     for tok, pos in items])
    device = model_device(model)
    tokens, positions, mask = to_device(batch, device)
    with inference(device, dtype):
        logits = model(tokens, positions, level, mask)
    return list(torch.softmax(logits.float(), 1).cpu().numpy())


def warmup_items(spec: Spec, level: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` dummy inputs of ``level`` (zeros, the spec's token shape and dtype) to warm the model up with."""
    tok, tokens = spec.tokenization, spec.ladder[level].tokens
    shape = (tokens, int(tok["token_dim"])) if "token_dim" in tok else (tokens,)
    sample = (np.zeros(shape, dtype=tok.get("token_dtype", "int32")), np.arange(tokens, dtype=np.int32))
    return [sample] * n
