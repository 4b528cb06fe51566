"""What a modality plugin provides (``Modality``) and what its compressor returns (``Compressed``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from icpc.contract import Spec

EMBEDDINGS = ("linear", "vocab")


@dataclass
class Compressed:
    """A sample at the levels asked for.

    levels: ``[(tokens (N_i, *token_shape), positions int32 (N_i,)), ...]`` in the order asked for.
    meta: facts about the sample for its index row (text: ``words``, ``truncated``; audio:
        ``seconds``, ``truncated``); JSON-serialisable scalars.
    """

    levels: list[tuple[np.ndarray, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Modality:
    """Everything the system needs to know about one modality; one module defines one of these.

    config_type: dataclass of the modality's settings; it becomes the section ``NAME`` of the
        compress config (``--set NAME.FIELD=VALUE``).
    build_spec: settings -> Spec (ladder, reference grid, tokenization incl. ``token_dim``,
        ``token_dtype``).
    scan: compress config -> (records, rejects, class names): what there is to compress.
    decode: (raw bytes of one input, spec) -> a decoded sample; raises ValueError with the reason.
        A server decodes a request once, whatever number of levels it then tries.
    compress: (decoded sample, spec, levels or None = all) -> Compressed, only the levels asked for.
    media_types: Content-Type prefixes of raw HTTP uploads (``"image/"``); JSON bodies carry the
        sample under ``json_field`` (``"data"``: base64; ``"text"``: a string).
    embedding: how the model embeds a token: ``"linear"`` (a vector of ``token_dim`` values) or
        ``"vocab"`` (an id below ``tokenization["vocab_size"]``).
    shared_positions: every sample of a level has the same positions (grid modalities), so a
        shard stores them once per level instead of once per sample.
    prepare: optional pass over the training records before compression (a vocabulary, IDF):
        (settings, training records, dataset folder URL) -> Spec, used instead of build_spec.
    needs_actors: settings -> whether compression must run in long-lived Ray actors (a model that
        is loaded once per process, e.g. text's teacher).
    warm_up: optional spec -> None that loads what compression caches per process (a tokenizer, a
        teacher model) before the first sample, so that a slow load on a busy node is not counted
        against the per-sample timeout (``sample_timeout_s``) and cannot kill the process as a hang.
    level0_as_input: optional (raw bytes of one input, spec) -> the bytes to store as level 0's
        member when the input already is level 0 in the level's codec (image: a JPEG of the
        reference side), else None; used where the manifest marks level 0 ``as_input``.
    """

    name: str
    config_type: type
    build_spec: Callable[[Any], Spec]
    scan: Callable[[Any], tuple[list, list, list[str]]]
    decode: Callable[[bytes, Spec], Any]
    compress: Callable[..., Compressed]
    media_types: tuple[str, ...]
    json_field: str = "data"
    embedding: str = "linear"
    shared_positions: bool = True
    prepare: Callable[[Any, list, str], Spec] | None = None
    needs_actors: Callable[[Any], bool] = lambda settings: False
    warm_up: Callable[[Spec], None] | None = None
    level0_as_input: Callable[[bytes, Spec], bytes | None] | None = None

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"modality {self.name!r}: embedding {self.embedding!r} is not one of {EMBEDDINGS}")
        if self.json_field not in ("data", "text"):
            raise ValueError(f"modality {self.name!r}: json_field must be 'data' (base64) or 'text'")

    def compress_bytes(self, data: bytes, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
        """Decode then compress: what the pipeline does to every input."""
        return self.compress(self.decode(data, spec), spec, levels)
