"""icpc.plan_loss: averaged over ranks (what DDP does to gradients), it is the mean over the global batch's real
samples, whatever the split over ranks, with weight-0 padding copies and partial batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import icpc


def averaged_gradient(model, x, y, split, weights) -> torch.Tensor:
    """The gradient DDP leaves on every rank: the mean over ranks of each rank's gradient of plan_loss."""
    grads = []
    for rows, w in zip(split, weights):
        model.zero_grad()
        batch = {"labels": y[rows], "weights": torch.tensor(w, dtype=torch.float32),
                 "global_samples": int(sum(v > 0 for ws in weights for v in ws))}
        icpc.plan_cross_entropy(model(x[rows]), batch, world_size=len(split)).backward()
        grads.append(model.weight.grad.clone())
    return torch.stack(grads).mean(0)


@pytest.mark.parametrize("split, weights", [
    ([[0, 1], [2, 3]], [[1, 1], [1, 1]]),          # a full global batch
    ([[0], [1, 2]], [[1], [1, 1]]),                # a partial batch dealt unevenly
    ([[0], [0]], [[1], [0]]),                      # one sample, two ranks: rank 1 trains a weight-0 copy
])
def test_the_rank_average_is_the_mean_over_the_real_samples(split, weights):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    real = sorted({r for rows, ws in zip(split, weights) for r, w in zip(rows, ws) if w > 0})
    model.zero_grad()
    F.cross_entropy(model(x[real]), y[real]).backward()
    want = model.weight.grad.clone()
    assert torch.allclose(averaged_gradient(model, x, y, split, weights), want, atol=1e-6)


def test_a_reduced_loss_is_refused():
    batch = {"weights": torch.ones(4), "global_samples": 4}
    with pytest.raises(ValueError, match="reduction='none'"):
        icpc.plan_loss(torch.tensor(1.0), batch)
