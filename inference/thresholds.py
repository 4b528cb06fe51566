"""Cascade thresholds on disk and in use: the calibration file, its checks, the levels a cascade tries."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from icpc import storage
from icpc.inference.cascade import cascade_order

THRESHOLDS_FILE = "thresholds.json"
OFF = 1.01          # a threshold no softmax probability reaches: the level is skipped


def active_order(thresholds: Sequence[float]) -> list[int]:
    """Levels the cascade tries, most compressed first: those with a threshold <= 1, and level 0."""
    return [lv for lv in cascade_order(len(thresholds)) if lv == 0 or thresholds[lv] <= 1.0]


def check_thresholds(values: Any, num_levels: int) -> list[str]:
    """Errors of a thresholds list: one number >= 0 per level (index = level)."""
    if not isinstance(values, (list, tuple)) or len(values) != num_levels:
        return [f"{values!r} must be a list of {num_levels} numbers, one per level (index = level)"]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values):
        return [f"{list(values)} must all be numbers >= 0 (above 1 turns a level off)"]
    return []


def load_thresholds(path: str | os.PathLike, num_levels: int) -> list[float]:
    """Per-level thresholds from a calibration file (``{"thresholds": [...]}``)."""
    p = str(path)
    if not storage.exists(p):
        raise FileNotFoundError(f"thresholds file {p} not found; run 'icpc calibrate --checkpoint ...' "
                                f"or pass --thresholds / --set set_thresholds=[...]")
    values = json.loads(storage.read_text(p)).get("thresholds")
    if errors := check_thresholds(values, num_levels):
        raise ValueError(f"{p}: thresholds " + "; ".join(errors))
    return [float(v) for v in values]
