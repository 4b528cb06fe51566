"""training/train.py's pure parts: the level schedule over epochs."""

from __future__ import annotations

import pytest

from icpc.config import TrainConfig
from icpc.pipeline.modalities.image import ImageConfig, build_spec
from icpc.training.train import level_weights

SPEC = build_spec(ImageConfig())  # five levels


def test_uniform_by_default_and_level0_for_the_baseline():
    assert level_weights(TrainConfig(epochs=3), SPEC, 1) == pytest.approx([0.2] * 5)
    assert level_weights(TrainConfig(epochs=3, baseline=True), SPEC, 0) == [1.0]


def test_weights_move_linearly_to_the_end_weights_and_a_final_level0_phase():
    cfg = TrainConfig(epochs=5, level_weights_end=[1], final_level0_epochs=1)
    w = [level_weights(cfg, SPEC, e) for e in range(5)]
    assert w[0] == pytest.approx([0.2] * 5)
    assert w[3] == pytest.approx([1, 0, 0, 0, 0])        # the end weights at the last mixed epoch
    assert w[1][0] == pytest.approx(0.2 + 0.8 / 3)        # a third of the way
    assert w[4] == [1.0]                                   # the level-0 finish


def test_short_weight_lists_cover_the_first_levels_and_long_ones_are_refused():
    assert level_weights(TrainConfig(epochs=2, level_weights=[1, 1]), SPEC, 0) == pytest.approx([0.5, 0.5, 0, 0, 0])
    with pytest.raises(ValueError, match="6 entries"):
        level_weights(TrainConfig(epochs=2, level_weights=[1] * 6), SPEC, 0)


def test_annealing_can_start_late():
    cfg = TrainConfig(epochs=9, level_weights_end=[1], anneal_start=0.5)
    w = [level_weights(cfg, SPEC, e)[0] for e in range(9)]
    assert w[:5] == pytest.approx([0.2] * 5)           # the first half (rounded) stays uniform
    assert w[8] == pytest.approx(1.0) and w[5] < w[6] < w[7] < w[8]
