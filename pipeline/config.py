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

from icpc import storage
from icpc.pipeline.modalities import registry


@dataclass
class CompressSettings:
    """``icpc compress``: raw samples -> shards + Parquet index + manifest (the modality-independent fields)."""

    modality: str = "image"
    input: str = ""                   # folder per class (optionally under train/ val/ test/), a CSV of path,label, or a text
                                      # table; a path or a URL (s3://, gs://)
    output: str = "runs/data"         # dataset folder (path or URL): manifest.json + a version folder v-ID/ with the shards,
                                      # index.parquet and rejects.parquet
    address: str | None = None        # Ray address; None = embedded ray.init() (or RAY_ADDRESS under `ray job submit`)
    num_cpus: float | None = None     # CPUs for an embedded Ray; None = all
    task_cpus: float = 0.0            # CPUs each shard task reserves; 0 = auto: 1 for local inputs (decoding dominates: two
                                      # tasks per core measured 1.44x on 2 cores vs 1.86x with one), 0.5 for object stores
                                      # (a task waiting on a GET leaves its core to the other)
    seed: int = 0                     # drives the validation split
    val_fraction: float = 0.1         # share of train samples held out as val when the input has no val/ folder
    test_fraction: float = 0.1        # share held out as test when the input has no split folders at all
    shard_samples: int = 500          # samples per shard (more, smaller shards feed more DDP ranks)
    max_input_bytes: int = 50_000_000 # inputs larger than this are rejected before decoding
    limit: int = 0                    # take at most this many samples per split (0 = all); for quick runs
    batch_size: int = 64              # unused since one Ray task builds each shard; kept so saved configs still load
    overwrite: bool = False           # build a new dataset beside the one in `output`, then switch to it (manifest write)
    resume: bool = False              # continue the interrupted run in `output`: sealed shards are kept (sha256 checked)
    max_reject_fraction: float = 0.05 # fail the job when one stage (scan, read, compress) rejects more than this share of
                                      # the inputs: a missing mount or a wrong input format is an error, not a dataset
    sample_timeout_s: float = 120.0   # s one input may take to decode and compress; longer is a hang: the input is rejected
    task_retries: int = 3             # times a failed shard task is retried (after the first: each sample in a child
                                      # process, so an input that crashes or hangs its decoder becomes a reject)
    max_in_flight: int = 0            # shard tasks submitted at once; 0 = 2 per CPU slot of the cluster (bounds driver memory)
    list_threads: int = 16            # class folders (prefixes) listed at once; CSV rows looked up at once
    codecs: str = "auto"              # payload codec per level (the member suffix, named in the manifest): auto = the
                                      # modality's default (pixels: npy.zst below lossy_min_side, jpg from it up; spectrograms
                                      # and float tokens: npy.zst; text: npy of uint16 ids and positions); or one of npy,
                                      # npy.zst, png, jpg, webp for every level; or one per level: "jpg,jpg,png,png,png"
    codec_quality: list[int] = field(default_factory=lambda: [90, 75])  # quality (1-100) of lossy levels (jpg, webp),
                                      # per level; the last value holds for the rest: level 0 at 90, the others at 75
                                      # (224 px photos: 2.93x the source JPEGs with level 0 as the input; [90,85]: 3.29x)
    lossy_min_side: int = 64          # px: auto stores pixel levels at least this wide as jpg, smaller ones as npy.zst
                                      # (0 = never lossy)
    level0_as_input: bool = True      # a jpg level 0 stores an input that already is its picture (a JPEG of the reference
                                      # side, image.sides[0], in image.channels) as the input's own bytes, metadata dropped:
                                      # no second JPEG generation, no encode; false = always re-encode at codec_quality

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
        for name in ("shard_samples", "batch_size", "max_input_bytes", "sample_timeout_s", "list_threads"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)}: must be positive")
        for name in ("limit", "task_retries", "max_in_flight", "task_cpus"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)}: must be >= 0")
        if not 0 <= self.max_reject_fraction <= 1:
            errors.append(f"max_reject_fraction={self.max_reject_fraction}: must be in [0, 1] "
                          f"(1 accepts any number of rejects)")
        if not self.codec_quality or not all(1 <= q <= 100 for q in self.codec_quality) or self.lossy_min_side < 0:
            errors.append(f"codec_quality={self.codec_quality}, lossy_min_side={self.lossy_min_side}: quality must be "
                          f"1-100 and the side >= 0 (0 = no lossy level)")
        if self.modality in modalities and hasattr(self, self.modality):
            section_errors = getattr(self, self.modality).validate()
            errors += section_errors
            if not section_errors:
                errors += self._codec_errors(modalities[self.modality])
        return errors

    def _codec_errors(self, modality) -> list[str]:
        """``codecs`` checked against the modality's tokens (an image codec on spectrograms, a wrong count)."""
        from icpc.codecs import plan_levels

        if modality.prepare is not None:
            return []   # the spec needs the corpus pass (text): checked when the job starts
        try:
            spec = modality.build_spec(self.settings)
            plan_levels(spec, modality.shared_positions, self.codecs, self.codec_quality, self.lossy_min_side,
                        self.level0_as_input and modality.level0_as_input is not None)
        except ValueError as exc:
            return [str(exc)]
        return []

    @property
    def cpus_per_task(self) -> float:
        """``task_cpus``, or its automatic value: 1 for local inputs, 0.5 for object-store URLs."""
        return self.task_cpus or (1.0 if storage.is_local(self.input) else 0.5)

    @property
    def settings(self) -> Any:
        """The chosen modality's section."""
        return getattr(self, self.modality)


# Fields that say how to run, not what to build: a --resume may change them (the rest must match the run).
RUN_FIELDS = ("output", "address", "num_cpus", "task_cpus", "batch_size", "overwrite", "resume", "max_reject_fraction",
              "sample_timeout_s", "task_retries", "max_in_flight", "list_threads")

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
