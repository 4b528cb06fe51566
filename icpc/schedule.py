"""The level schedule: how likely each compression level is in each epoch (a pure function, numpy only).

    LevelSchedule()                                        # uniform over the ladder, every epoch
    LevelSchedule(baseline=True)                           # level 0 only (the A/B reference)
    LevelSchedule(weights=[4, 2, 1, 1, 1], weights_end=[1, 0, 0, 0, 0], anneal_start=0.5, epochs=20)

``icpc train`` builds one from its config (``from_config``); users of ``icpc.ICPCLoader`` pass one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LevelSchedule:
    """Relative draw probability of every level per epoch.

    ``weights`` (default uniform) until ``anneal_start`` of the epochs, then moving linearly to
    ``weights_end`` (when given) at the last mixed epoch; the last ``final_level0_epochs`` epochs
    train level 0 only; a baseline always does. ``epochs`` matters only for annealing and the
    final level-0 epochs.
    """

    weights: list[float] = field(default_factory=list)      # per level 0..K; [] = uniform; missing levels get 0
    weights_end: list[float] = field(default_factory=list)  # weights of the last mixed epoch; [] = constant
    anneal_start: float = 0.0        # share of the mixed epochs spent at ``weights`` before moving
    final_level0_epochs: int = 0     # the last N of ``epochs`` train level 0 only
    epochs: int = 0                  # the run's length in epochs (needed with weights_end or final_level0_epochs)
    baseline: bool = False           # level 0 only, every epoch

    @classmethod
    def from_config(cls, cfg) -> "LevelSchedule":
        """The schedule of an ``icpc.config.TrainConfig``."""
        return cls(list(cfg.level_weights), list(cfg.level_weights_end), cfg.anneal_start, cfg.final_level0_epochs,
                   cfg.epochs, cfg.baseline)

    def check(self, levels: int) -> None:
        """Refuse weights longer than the ladder, or negative / all-zero ones, naming them."""
        for name, w in (("weights", self.weights), ("weights_end", self.weights_end)):
            if len(w) > levels:
                raise ValueError(f"level {name} has {len(w)} entries but the ladder has {levels} levels; "
                                 f"give at most {levels}")
            if any(x < 0 for x in w) or (w and not sum(w)):
                raise ValueError(f"level {name}={list(w)}: must be non-negative, not all zero")
        if (self.weights_end or self.final_level0_epochs) and self.epochs < 1:
            raise ValueError(f"LevelSchedule(epochs={self.epochs}): weights_end and final_level0_epochs count from "
                             f"the end of the run; pass epochs=the run's epochs")

    def at(self, epoch: int, levels: int) -> list[float]:
        """Probabilities of levels 0.. in ``epoch`` (summing to 1; ``[1.0]`` when only level 0 is drawn)."""
        self.check(levels)
        if self.baseline or (self.final_level0_epochs and epoch >= self.epochs - self.final_level0_epochs):
            return [1.0]
        start = np.zeros(levels)
        start[: len(self.weights or [1.0] * levels)] = self.weights or [1.0] * levels
        if not self.weights_end:
            return (start / start.sum()).tolist()
        end = np.zeros(levels)
        end[: len(self.weights_end)] = self.weights_end
        first = int(round(self.anneal_start * (self.epochs - self.final_level0_epochs)))
        span = max(1, self.epochs - self.final_level0_epochs - 1 - first)
        t = min(1.0, max(0.0, (epoch - first) / span))
        return ((1 - t) * start / start.sum() + t * end / end.sum()).tolist()
