"""The ICPC data contract (shared/DESIGN.md contracts 1-4): ladder, grids, positions, members, level draw.

This is the one source of truth for what a compressed sample looks like on disk and what its
positions mean. It imports only the standard library and numpy so that every part of the
system (Ray workers, DDP trainers, Serve replicas, tests) can import it cheaply.

Layout of one sample in a WebDataset shard (``KEY`` has no dots):

    KEY.l0.tok.npy   token payload of level 0, first axis = tokens (N0, ...)
    KEY.l0.pos.npy   int32 (N0,) flattened row-major index of each token in the reference grid
    KEY.l1.tok.npy   ... one pair per level of the ladder
    KEY.cls          label as decimal text
    KEY.json         metadata (key, source, split, label name, tokens per level, ...)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------- constants

SCHEMA_VERSION = 1
MODALITIES = ("image", "text", "video", "audio")
STRATEGIES = ("consistent", "corner", "renumber", "interpolate")
SPLITS = ("train", "val", "test")

TOKENS_SUFFIX = "tok.npy"
POSITIONS_SUFFIX = "pos.npy"
LABEL_MEMBER = "cls"
META_MEMBER = "json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def tokens_member(level: int) -> str:
    """Member name (the part after ``KEY.``) of level ``level``'s token payload."""
    return f"l{level}.{TOKENS_SUFFIX}"


def positions_member(level: int) -> str:
    """Member name (the part after ``KEY.``) of level ``level``'s positions."""
    return f"l{level}.{POSITIONS_SUFFIX}"


def sanitize_key(raw: str) -> str:
    """Map any source identifier to a WebDataset-safe key: only ``[A-Za-z0-9_-]``.

    WebDataset splits a member name at the first dot of its basename, so a dot in a key would
    silently split one sample into two.
    """
    key = re.sub(r"[^A-Za-z0-9_\-]", "_", raw.strip("/"))
    if not key:
        raise ValueError(f"cannot make a sample key from {raw!r}: nothing is left after sanitising")
    return key


def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"sample key {key!r} must match {_KEY_RE.pattern} (no dots); use sanitize_key()")
    return key


# ----------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Level:
    """One rung of a ladder.

    params: what defines the compression (image ``{"side": px}``, text ``{"keep": ratio}``,
        video ``{"frames": n, "side": px}``, audio ``{"frames": n, "mels": n}``).
    grid: token grid shape of this level (e.g. ``(6, 6)`` patches); ``()`` for text, whose
        token count depends on the sample.
    tokens: token count (for text: the maximum).
    """

    params: dict[str, float]
    grid: tuple[int, ...]
    tokens: int

    @property
    def name(self) -> str:
        return "_".join(f"{k}{_fmt(v)}" for k, v in self.params.items())


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class Spec:
    """What a model must agree with: modality, reference grid, ladder and tokenization.

    reference_grid: token grid of level 0, e.g. ``(7, 7)`` patches of a 28 px image with 4 px
        patches, ``(t, y, x)`` tubelets for video, ``(f, t)`` for audio, ``(max_len,)`` for text.
    tokenization: patch / tubelet size, channels, tokenizer name and max length, ...
    """

    modality: str
    reference_grid: tuple[int, ...]
    ladder: tuple[Level, ...]
    tokenization: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality {self.modality!r} is not one of {MODALITIES}")
        if not self.ladder:
            raise ValueError("a ladder needs at least level 0")
        if any(n <= 0 for n in self.reference_grid):
            raise ValueError(f"reference grid {self.reference_grid} must be positive")

    @property
    def reference_cells(self) -> int:
        return math.prod(self.reference_grid)

    def to_json(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "reference_grid": list(self.reference_grid),
            "ladder": [{"name": lv.name, **asdict(lv), "grid": list(lv.grid)} for lv in self.ladder],
            "tokenization": dict(self.tokenization),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Spec":
        ladder = tuple(Level(dict(lv["params"]), tuple(lv["grid"]), int(lv["tokens"])) for lv in d["ladder"])
        return cls(d["modality"], tuple(d["reference_grid"]), ladder, dict(d.get("tokenization", {})))


def spec_mismatches(expected: Spec, found: Spec) -> list[str]:
    """Human-readable differences between two specs (empty when they agree)."""
    a, b = expected.to_json(), found.to_json()
    return [f"{k}: model has {a[k]!r}, data has {b[k]!r}" for k in a if a[k] != b[k]]


def check_spec(expected: Spec, found: Spec, what: str) -> None:
    """Refuse to go on when a model and a dataset disagree (DESIGN contract 1)."""
    diffs = spec_mismatches(expected, found)
    if diffs:
        raise ValueError(f"{what}: the model spec does not match the data spec:\n  " + "\n  ".join(diffs))


# ----------------------------------------------------------------------------- positions


def _cell_centres(level_n: int, ref_n: int) -> np.ndarray:
    """Reference-grid cell (along one axis) containing the centre of each of ``level_n`` cells."""
    # floor((i + 1/2) * ref_n / level_n) in exact integer arithmetic: a centre that lies exactly on
    # a cell edge (ref 26, level 23, i = 11 -> 13.0) must not round down to the cell before it.
    return np.minimum((2 * np.arange(level_n) + 1) * ref_n // (2 * level_n), ref_n - 1)


def consistent_positions(reference_grid: Sequence[int], level_grid: Sequence[int]) -> np.ndarray:
    """Index in the reference grid of the cell that contains each level cell's centre.

    Both grids cover the same extent (same image / clip / spectrogram), so a level cell
    ``(i, j)`` of an ``h x w`` grid has centre ``((i+.5)H/h, (j+.5)W/w)`` in reference cells.
    Returns int32 ``(prod(level_grid),)`` in row-major order of the level grid.
    """
    _check_grids(reference_grid, level_grid)
    axes = [_cell_centres(n, r) for n, r in zip(level_grid, reference_grid)]
    return _ravel(axes, reference_grid)


def corner_positions(reference_grid: Sequence[int], level_grid: Sequence[int]) -> np.ndarray:
    """The top-left sub-grid of the reference grid (what the authors' released code does)."""
    _check_grids(reference_grid, level_grid)
    return _ravel([np.arange(n) for n in level_grid], reference_grid)


def renumber_positions(n_tokens: int) -> np.ndarray:
    """Positions 0..n-1, ignoring where the tokens came from."""
    return np.arange(n_tokens, dtype=np.int32)


def interpolation_matrix(reference_grid: Sequence[int], level_grid: Sequence[int]) -> np.ndarray:
    """float32 ``(prod(level_grid), prod(reference_grid))`` that resizes a position table.

    Row ``k`` holds the weights that linear (bi-/tri-linear) interpolation with
    ``align_corners=False`` puts on each reference cell for level cell ``k``, as FlexiViT resizes
    its table. ``matrix @ table`` gives the level's position embeddings.
    """
    _check_grids(reference_grid, level_grid)
    out = np.ones((1, 1), dtype=np.float64)
    for n, r in zip(level_grid, reference_grid):
        out = np.kron(out, _linear_resize_1d(r, n))
    return out.astype(np.float32)


def _linear_resize_1d(ref_n: int, level_n: int) -> np.ndarray:
    m = np.zeros((level_n, ref_n))
    src = np.clip((np.arange(level_n) + 0.5) * ref_n / level_n - 0.5, 0, ref_n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, ref_n - 1)
    frac = src - lo
    m[np.arange(level_n), lo] += 1 - frac
    m[np.arange(level_n), hi] += frac
    return m


def positions_for(strategy: str, reference_grid: Sequence[int], level_grid: Sequence[int],
                  stored: np.ndarray | None = None) -> np.ndarray:
    """Position indices for ``strategy`` (``interpolate`` indexes rows of the resized table).

    For text (``level_grid == ()``) ``stored`` holds the consistent positions of the kept tokens;
    ``corner``/``renumber``/``interpolate`` then number the kept tokens 0..n-1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"position strategy {strategy!r} is not one of {STRATEGIES}")
    if not level_grid:  # text: a pruned 1-D sequence, not a resized grid
        if stored is None:
            raise ValueError("text positions need the stored (consistent) positions")
        return stored.astype(np.int32) if strategy == "consistent" else renumber_positions(len(stored))
    if strategy == "consistent":
        return stored.astype(np.int32) if stored is not None else consistent_positions(reference_grid, level_grid)
    if strategy == "corner":
        return corner_positions(reference_grid, level_grid)
    return renumber_positions(math.prod(level_grid))


def _check_grids(reference_grid: Sequence[int], level_grid: Sequence[int]) -> None:
    if len(reference_grid) != len(level_grid):
        raise ValueError(f"level grid {tuple(level_grid)} and reference grid {tuple(reference_grid)} differ in rank")
    if any(n <= 0 or n > r for n, r in zip(level_grid, reference_grid)):
        raise ValueError(f"level grid {tuple(level_grid)} must be positive and within {tuple(reference_grid)}")


def _ravel(axes: list[np.ndarray], reference_grid: Sequence[int]) -> np.ndarray:
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.ravel_multi_index([m.ravel() for m in mesh], tuple(reference_grid)).astype(np.int32)


# ----------------------------------------------------------------------------- level draw


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) that is a pure function of ``parts`` (blake2b, not ``hash()``)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def draw_level(seed: int, epoch: int, key: str, weights: Sequence[float]) -> int:
    """The level sample ``key`` gets in ``epoch``: a pure function of (seed, epoch, key).

    ``weights`` are relative probabilities of levels 0..K (a baseline run passes ``[1]``).
    """
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"level weights {list(weights)} must be non-negative and not all zero")
    u = unit_hash("level", seed, epoch, key) * total
    acc = 0.0
    for level, w in enumerate(weights):
        acc += w
        if u < acc:
            return level
    return len(weights) - 1


def split_of(key: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> str:
    """``test``/``val`` for those shares of keys, chosen by hash (stable under re-runs); else ``train``."""
    u = unit_hash("split", seed, key)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def epoch_permutation(n: int, seed: int, epoch: int, repeat: int = 0) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch, repeat)."""
    return np.random.default_rng([seed, epoch, repeat]).permutation(n)


def assign_shards(n_shards: int, seed: int, epoch: int, rank: int, world: int, repeat: int = 0) -> list[int]:
    """Shards this rank reads in ``epoch``: the (seed, epoch) permutation, dealt round-robin.

    Every rank gets ``n_shards // world`` or one more; a rank never shares a shard with another
    in the same epoch. Which samples a rank sees changes, which *level* a sample gets does not
    (that is ``draw_level``), so resharding never changes the level stream of a sample.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    if n_shards < world:
        raise ValueError(f"{n_shards} shards cannot feed {world} ranks; write more, smaller shards "
                         f"(--shard-samples) or use fewer ranks")
    return [int(s) for s in epoch_permutation(n_shards, seed, epoch, repeat)[rank::world]]


# ----------------------------------------------------------------------------- encode / decode


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def encode_sample(key: str, label: int, levels: Sequence[tuple[np.ndarray, np.ndarray]],
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    """A WebDataset sample dict (member -> bytes) for ``levels`` = [(tokens, positions), ...]."""
    sample: dict[str, Any] = {"__key__": check_key(key), LABEL_MEMBER: str(int(label)).encode()}
    for i, (tokens, positions) in enumerate(levels):
        if len(tokens) != len(positions):
            raise ValueError(f"{key} level {i}: {len(tokens)} tokens but {len(positions)} positions")
        sample[tokens_member(i)] = encode_npy(tokens)
        sample[positions_member(i)] = encode_npy(np.asarray(positions, dtype=np.int32))
    sample[META_MEMBER] = json.dumps(dict(meta), sort_keys=True).encode()
    return sample


def decode_sample(raw: Mapping[str, Any], levels: Sequence[int] | None = None) -> dict[str, Any]:
    """Inverse of ``encode_sample`` on raw bytes; never unpickles.

    Returns ``{"key", "label", "meta", "levels": {i: (tokens, positions)}}``, decoding only the
    levels asked for (all present ones when ``levels`` is None).
    """
    present = sorted(int(m[1:].split(".")[0]) for m in raw if m.endswith(TOKENS_SUFFIX))
    wanted = present if levels is None else list(levels)
    missing = [i for i in wanted if i not in present]
    if missing:
        raise KeyError(f"sample {raw.get('__key__')!r} has no level(s) {missing}; it holds {present}")
    return {
        "key": raw["__key__"],
        "label": int(raw[LABEL_MEMBER]),
        "meta": json.loads(raw[META_MEMBER]),
        "levels": {i: (decode_npy(raw[tokens_member(i)]), decode_npy(raw[positions_member(i)])) for i in wanted},
    }
