"""``icpc compress`` settings: the job's own fields plus one section per registered modality.

``CompressConfig`` has a field named after every modality in the registry (``image``, ``text``,
``video``, ``audio``, and any plugin), holding that modality's config dataclass, so
``--set image.sides=28,20,12`` and ``--set text.keep=1,0.5`` work alike and adding a modality
touches no file here. ``compress_config_class()`` rebuilds the class when a plugin registers later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from icpc.pipeline.modalities import registry


@dataclass
class CompressSettings:
    """``icpc compress``: raw samples -> shards + Parquet index + manifest (the modality-independent fields)."""

    modality: str = "image"
    input: str = ""                   # folder per class (optionally under train/ val/ test/), a CSV of path,label, or a text table
    output: str = "runs/data"         # folder for shards, index.parquet, rejects.parquet, manifest.json
    address: str | None = None        # Ray address; None = embedded ray.init() (or RAY_ADDRESS under `ray job submit`)
    num_cpus: float | None = None     # CPUs for an embedded Ray; None = all
    seed: int = 0                     # drives the validation split
    val_fraction: float = 0.1         # share of train samples held out as val when the input has no val/ folder
    test_fraction: float = 0.1        # share held out as test when the input has no split folders at all
    shard_samples: int = 500          # samples per shard (more, smaller shards feed more DDP ranks)
    max_input_bytes: int = 50_000_000 # inputs larger than this are rejected before decoding
    limit: int = 0                    # take at most this many samples per split (0 = all); for quick runs
    batch_size: int = 64              # samples per Ray Data batch
    overwrite: bool = False           # replace an existing dataset in `output`

    def validate(self) -> list[str]:
        errors = []
        modalities = registry()
        if self.modality not in modalities:
            errors.append(f"modality={self.modality!r}: choose one of {sorted(modalities)}")
        if not self.input:
            errors.append("input: is empty; pass --input PATH (a folder per class, a CSV of path,label, or a text table)")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            errors.append(f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}: "
                          "each must be in [0, 1) and their sum below 1")
        for name in ("shard_samples", "batch_size", "max_input_bytes"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)}: must be positive")
        if self.limit < 0:
            errors.append(f"limit={self.limit}: must be >= 0")
        if self.modality in modalities and hasattr(self, self.modality):
            errors += getattr(self, self.modality).validate()
        return errors

    @property
    def settings(self) -> Any:
        """The chosen modality's section."""
        return getattr(self, self.modality)


_CLASSES: dict[tuple, type] = {}


def compress_config_class() -> type:
    """``CompressSettings`` plus one section per registered modality (cached per set of modalities)."""
    sections = tuple((name, m.config_type) for name, m in registry().items())
    if sections not in _CLASSES:
        _CLASSES[sections] = dataclasses.make_dataclass(
            "CompressConfig", [(name, typ, field(default_factory=typ)) for name, typ in sections],
            bases=(CompressSettings,), namespace={"__module__": __name__, "__doc__": CompressSettings.__doc__})
    return _CLASSES[sections]


CompressConfig = compress_config_class()
