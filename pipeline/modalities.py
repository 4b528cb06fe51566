"""The registry of modalities: one config type, spec builder and compressor signature for each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from icpc.contract import Spec
from pipeline import audio, image, text, text_corpus, text_scan, video
from pipeline.sources import Record, Reject, scan_class_folders, scan_path_csv

# compress(payload, spec, levels=None) -> [(tokens (N_i, ...), positions int32 (N_i,)) for each level];
# ``levels`` (optional) computes only those levels, in that order: the server's cascade asks for one
# level at a time. None = every level of the ladder (the pipeline).
Compressor = Callable[..., list[tuple[np.ndarray, np.ndarray]]]


# scan(compress_config) -> (records, rejects, class names): what to compress, and what cannot be
Scanner = Callable[[Any], tuple[list[Record], list[Reject], list[str]]]


@dataclass(frozen=True)
class Modality:
    """Everything the pipeline needs to know about one modality.

    config_type: the dataclass of its ladder/tokenization settings (a field of CompressConfig
        named after the modality).
    build_spec: settings -> Spec (ladder, reference grid, tokenization).
    compress: the one compressor signature, shared by the Ray job and the server.
    scan: the input reader.
    prepare: optional pass over the training records before compression (e.g. corpus IDF or a
        vocabulary) that returns the Spec instead of build_spec; it may write side files into
        the output folder and name them in ``spec.tokenization``.
    """

    config_type: type
    build_spec: Callable[[Any], Spec]
    compress: Compressor
    scan: Scanner
    prepare: Callable[[Any, list[Record], Path], Spec] | None = None


def _file_scanner(extensions: set[str]) -> Scanner:
    """The scanner of a modality whose samples are files: a folder per class, or a CSV of path,label."""

    def scan(cfg: Any) -> tuple[list[Record], list[Reject], list[str]]:
        args = (extensions, cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.limit)
        if Path(cfg.input).is_file() and cfg.input.endswith(".csv"):
            return scan_path_csv(cfg.input, *args)
        return scan_class_folders(cfg.input, *args)

    return scan


MODALITIES: dict[str, Modality] = {
    "image": Modality(image.ImageConfig, image.build_spec, image.compress, _file_scanner(image.IMAGE_EXTENSIONS)),
    "video": Modality(video.VideoConfig, video.build_spec, video.compress, _file_scanner(video.VIDEO_EXTENSIONS)),
    "text": Modality(text.TextConfig, text.build_spec, text.compress, text_scan.scan_text_tables,
                     text_corpus.prepare),
    "audio": Modality(audio.AudioConfig, audio.build_spec, audio.compress, _file_scanner(audio.AUDIO_EXTENSIONS)),
}


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"modality {name!r} is not available; choose one of {sorted(MODALITIES)}")
    return MODALITIES[name]
