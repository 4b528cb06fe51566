"""The ICPC data contract (docs/design.md): ladder, grids, positions, level draws and the shard layout.

This is the one source of truth for what a compressed sample looks like on disk and what its
positions mean. It imports only the standard library and numpy so that every part of the
system (Ray workers, DDP trainers, Serve replicas, tests) can import it cheaply.

A shard (schema 3, layout ``webdataset`` version 1) is a standard WebDataset tar: one sample is
the members that share its key, so ``webdataset``, ``wids``, Ray Data and Energon see one record
per input:

    KEY.l0.png     level 0's payload, its codec named by the suffix (png, jpg, webp, npy, npy.zst)
    KEY.l1.jpg ... one member per level of the ladder
    KEY.cls        the label, a decimal integer
    KEY.json       small metadata: key, label, label name, token count per level, compressor facts

A level's payload is one array (``LEVEL_VIEWS``): the level's pixels / frames / spectrogram cut
back from its tokens (``blocks``: image ``(H, W, C)``, video ``(T, H, W, C)``, audio ``(mels,
frames)``), the tokens themselves (``tokens``: modalities without a block geometry), or for text
``(2, n)`` rows of token ids and their positions (``ids_positions``: positions that differ per
sample travel with their tokens, in the same member, so one range read gets both). Positions that
a level shares across samples (every grid modality) are stored once, in the manifest. The
manifest's ``layout.levels`` names each level's field, codec and array shape; index.parquet gives
every sample's byte offset, size and CRC-32 per level, so a trainer reads exactly one payload
with one range read.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------- constants

SCHEMA_VERSION = 3
LAYOUT = {"name": "webdataset", "version": 1}
STRATEGIES = ("consistent", "corner", "renumber", "interpolate")
SPLITS = ("train", "val", "test")

LABEL_FIELD = "cls"               # a sample's label member: the class index as decimal text
META_FIELD = "json"               # a sample's metadata member
TAR_BLOCK = 512
TAR_NAME_MAX = 100                # bytes of a ustar member name: wids reads plain ustar names only
# Codecs a level payload may use (the member suffix) and whether they are exact.
CODECS = {"npy": "lossless", "npy.zst": "lossless", "png": "lossless", "jpg": "lossy", "webp": "lossy"}
IMAGE_CODECS = ("png", "jpg", "webp")   # 8-bit pictures: a level's blocks as an (H, W, C) or (T*H, W, C) image
LEVEL_VIEWS = ("blocks", "tokens", "ids_positions")
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def level_field(level: int, codec: str) -> str:
    """The field (member suffix after ``KEY.``) of level ``level``'s payload, e.g. ``l0.png``."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not one of {sorted(CODECS)}")
    return f"l{level}.{codec}"


def member_name(key: str, field: str) -> str:
    """A tar member's name: WebDataset groups members by the part before the first dot (the key)."""
    return f"{key}.{field}"


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
        if not self.modality:
            raise ValueError("a spec needs a modality")
        if not self.ladder:
            raise ValueError("a ladder needs at least level 0")
        if any(n <= 0 for n in self.reference_grid):
            raise ValueError(f"reference grid {self.reference_grid} must be positive")

    @property
    def reference_cells(self) -> int:
        return math.prod(self.reference_grid)

    @property
    def token_dtype(self) -> np.dtype:
        """dtype of the token payload (``uint8`` pixels, ``float16`` spectrograms, ``int32`` ids, ...)."""
        return np.dtype(self.tokenization["token_dtype"])

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one token: ``(token_dim,)`` for vectors, ``()`` for ids (text)."""
        dim = self.tokenization.get("token_dim")
        return (int(dim),) if dim else ()

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
    out = []
    for k in a:
        if a[k] == b[k]:
            continue
        if isinstance(a[k], dict) and isinstance(b[k], dict):  # name the sub-keys (a text spec holds a whole tokenizer)
            out += [f"{k}.{s}: model has {_short(a[k].get(s))}, data has {_short(b[k].get(s))}"
                    for s in sorted(set(a[k]) | set(b[k])) if a[k].get(s) != b[k].get(s)]
        else:
            out.append(f"{k}: model has {_short(a[k])}, data has {_short(b[k])}")
    return out


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
    Returns int32 ``(prod(level_grid),)`` in row-major order of the level grid, read-only and
    cached per pair of grids (a compressor asks for it once per sample and level).
    """
    return _consistent_positions(tuple(int(n) for n in reference_grid), tuple(int(n) for n in level_grid))


@functools.lru_cache(maxsize=256)
def _consistent_positions(reference_grid: tuple[int, ...], level_grid: tuple[int, ...]) -> np.ndarray:
    _check_grids(reference_grid, level_grid)
    axes = [_cell_centres(n, r) for n, r in zip(level_grid, reference_grid)]
    out = _ravel(axes, reference_grid)
    out.setflags(write=False)
    return out


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

_MASK64 = (1 << 64) - 1


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) that is a pure function of ``parts`` (blake2b, not ``hash()``)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def key_hash(key: str) -> int:
    """The 64-bit hash of a sample key that the level draw mixes (stored in the index as ``key_hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a bijective bit mixer."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def unit_hashes(key_hashes: np.ndarray, *salt: int) -> np.ndarray:
    """float64 in [0, 1) per key: a pure function of (key hash, salt), vectorised over keys."""
    with np.errstate(over="ignore"):
        mix = np.array([0], dtype=np.uint64)
        for part in salt:
            mix = _splitmix64(mix ^ np.uint64(int(part) & _MASK64))
        out = _splitmix64(np.asarray(key_hashes, dtype=np.uint64) ^ mix)
    return (out >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _check_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or w.sum() <= 0 or (w < 0).any():
        raise ValueError(f"level weights {list(weights)} must be non-negative and not all zero")
    return w


def draw_levels(seed: int, epoch: int, key_hashes: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """int64 level of each key in ``epoch``: a pure function of (seed, epoch, key), vectorised.

    ``weights`` are relative probabilities of levels 0..K (a baseline run passes ``[1]``). The
    draw does not depend on which shard, rank or worker holds the key, nor on the order of keys.
    """
    cum = np.cumsum(_check_weights(weights))
    u = unit_hashes(key_hashes, 0x1CEC, seed, epoch) * cum[-1]
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1).astype(np.int64)


def draw_level(seed: int, epoch: int, key: str, weights: Sequence[float]) -> int:
    """The level sample ``key`` gets in ``epoch`` (``draw_levels`` for one key)."""
    return int(draw_levels(seed, epoch, np.array([key_hash(key)], dtype=np.uint64), weights)[0])


def split_of(key: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> str:
    """``test``/``val`` for those shares of keys, chosen by hash (stable under re-runs); else ``train``."""
    u = unit_hash("split", seed, key)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def epoch_permutation(n: int, seed: int, epoch: int, repeat: int = 0) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch, repeat)."""
    return np.random.default_rng([seed, epoch, repeat]).permutation(n)


# ----------------------------------------------------------------------------- level payloads


def block_geometry(spec: Spec) -> tuple[tuple[int, ...], int | None] | None:
    """(block shape per grid axis, channels or None) when a token is a block of the level's array.

    Image tokens are ``p x p x C`` patches, video tokens ``t x p x p x C`` tubelets, audio tokens
    ``pf x pt`` spectrogram patches (no channel axis): a level's tokens are then its array cut into
    blocks, row-major over the grid, and can be stored as that array (a picture a codec compresses).
    None when the tokenization names no such geometry (text, plugins without ``patch``/``tubelet``).
    """
    tok = spec.tokenization
    patch = tok.get("tubelet", tok.get("patch"))
    if patch is None or not spec.token_shape:
        return None
    block = tuple(int(n) for n in (patch if isinstance(patch, (list, tuple)) else [patch] * len(spec.reference_grid)))
    channels = int(tok["channels"]) if "channels" in tok else None
    if len(block) != len(spec.reference_grid) or math.prod(block) * (channels or 1) != math.prod(spec.token_shape):
        return None
    return block, channels


def blocks_shape(grid: Sequence[int], block: Sequence[int], channels: int | None) -> tuple[int, ...]:
    """Shape of the array a level's blocks tile: ``(g0*b0, g1*b1, ..., [C])``."""
    return tuple(g * b for g, b in zip(grid, block)) + ((channels,) if channels else ())


def tokens_to_blocks(tokens: np.ndarray, grid: Sequence[int], block: Sequence[int], channels: int | None) -> np.ndarray:
    """``(prod(grid), prod(block)*C)`` tokens -> the array they tile (inverse of ``blocks_to_tokens``)."""
    n, c = len(grid), channels or 1
    x = tokens.reshape(*grid, *block, c)
    order = [k for i in range(n) for k in (i, n + i)] + [2 * n]   # (g0, b0, g1, b1, ..., C)
    return x.transpose(order).reshape(blocks_shape(grid, block, channels))


def blocks_to_tokens(array: np.ndarray, grid: Sequence[int], block: Sequence[int], channels: int | None) -> np.ndarray:
    """An array of shape ``blocks_shape(...)`` -> ``(prod(grid), prod(block)*C)`` tokens, row-major over
    the grid, each block's values in (block axes..., channel) order (as every modality patchifies)."""
    n, c = len(grid), channels or 1
    x = array.reshape(*(v for g, b in zip(grid, block) for v in (g, b)), c)
    order = [2 * i for i in range(n)] + [2 * i + 1 for i in range(n)] + [2 * n]
    return x.transpose(order).reshape(math.prod(grid), math.prod(block) * c)


def ids_dtype(spec: Spec) -> np.dtype:
    """Packed dtype of text ids and positions: uint16 when the vocabulary and the reference grid fit."""
    largest = max(int(spec.tokenization.get("vocab_size", 1 << 31)), spec.reference_cells)
    return np.dtype("<u2") if largest <= 1 << 16 else np.dtype("<i4")


def payload_crc(data: bytes) -> int:
    """CRC-32 of a stored payload (checked by readers before decoding)."""
    return zlib.crc32(data) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- encode / decode


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
