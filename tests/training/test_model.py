"""training/model.py: the LR schedule and the parameter groups."""

from __future__ import annotations

import pytest

from icpc.training.model import warmup_cosine


def test_warmup_cosine():
    total, warmup = 100, 10
    lrs = [warmup_cosine(s, total, warmup) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.1)          # (0 + 1) / 10: near 0, never exactly 0
    assert lrs[9] == pytest.approx(1.0)          # end of warmup
    assert lrs[10] == pytest.approx(1.0)         # cosine starts at its peak
    assert lrs[55] == pytest.approx(0.5)         # halfway through the decay: (1 + cos(pi/2)) / 2
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert max(lrs) == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(150, total, warmup) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_without_warmup():
    assert warmup_cosine(0, 10, 0) == pytest.approx(1.0)
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 0) == pytest.approx(0.0, abs=1e-12)
