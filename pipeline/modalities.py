"""The registry of modalities: one config type, spec builder and compressor signature for each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from icpc.contract import Spec
from pipeline import image

# compress(payload, spec) -> [(tokens (N_i, ...), positions int32 (N_i,)) for each level]
Compressor = Callable[[bytes, Spec], list[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Modality:
    config_type: type
    build_spec: Callable[[Any], Spec]
    compress: Compressor


MODALITIES: dict[str, Modality] = {
    "image": Modality(image.ImageConfig, image.build_spec, image.compress),
}


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"modality {name!r} is not available; choose one of {sorted(MODALITIES)}")
    return MODALITIES[name]
