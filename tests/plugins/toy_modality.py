"""A toy modality in one module, registered from outside the package: 1-D signals in text files.

``ICPC_MODALITIES=tests.plugins.toy_modality`` makes every icpc process (and the Ray workers and
torchrun ranks it starts) import this module, which registers the modality ``signal``. Nothing
else in the project names it: that is what the plugin test checks.

A sample is a ``.sig`` file of 32 whitespace-separated numbers. Level i averages the signal down
to ``lengths[i]`` values; tokens are windows of 4 values (float16 ``(n/4, 4)``) on a 1-D grid,
each at the reference cell that holds its centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from icpc.contract import Level, Spec, consistent_positions
from icpc.pipeline.modalities import Compressed, Modality, register
from icpc.pipeline.scan import file_scanner

WINDOW = 4


@dataclass
class SignalConfig:
    """Ladder of a signal dataset."""

    lengths: list[int] = field(default_factory=lambda: [32, 16, 8])  # values per level; [0] = reference

    def validate(self) -> list[str]:
        bad = [n for n in self.lengths if n <= 0 or n % WINDOW or n > self.lengths[0]]
        return [f"signal.lengths={self.lengths}: {bad} are not multiples of {WINDOW} up to the reference"] if bad else []


def build_spec(cfg: SignalConfig) -> Spec:
    ladder = tuple(Level({"length": n}, (n // WINDOW,), n // WINDOW) for n in cfg.lengths)
    return Spec("signal", ladder[0].grid, ladder, {"token_dim": WINDOW, "token_dtype": "float16"})


def decode(data: bytes, spec: Spec) -> np.ndarray:
    values = np.array(data.decode("ascii").split(), dtype=np.float64)
    n = int(spec.ladder[0].params["length"])
    if len(values) != n:
        raise ValueError(f"a signal has {n} values, this file {len(values)}")
    return values


def compress(signal: np.ndarray, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    out = []
    for level in (spec.ladder if levels is None else [spec.ladder[i] for i in levels]):
        n = int(level.params["length"])
        pooled = signal.reshape(n, -1).mean(1).astype(np.float16)
        out.append((pooled.reshape(-1, WINDOW), consistent_positions(spec.reference_grid, level.grid)))
    return Compressed(out)


MODALITY = register(Modality(
    name="signal", config_type=SignalConfig, build_spec=build_spec, scan=file_scanner({".sig"}), decode=decode,
    compress=compress, media_types=("text/x-signal",), embedding="linear", shared_positions=True,
))
