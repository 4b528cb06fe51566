"""The image modality: resolution modulation, one downscaled, patchified copy per ladder level."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from icpc.codecs import jpeg_as_level, warm_up_decoders
from icpc.contract import Level, Spec, consistent_positions
from icpc.pipeline.modalities.base import Compressed, Modality
from icpc.pipeline.scan import file_scanner

# Decoded images larger than this many pixels are refused before the full decode (PIL would
# otherwise allocate width x height x channels bytes for a hostile header).
MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


@dataclass
class ImageConfig:
    """Ladder and tokenization of an image dataset."""

    sides: list[int] = field(default_factory=lambda: [28, 24, 20, 16, 12])  # px per level; sides[0] is the reference
    patch: int = 4                # px; every side must be a multiple of it
    channels: int = 1             # 1 = grayscale, 3 = RGB; inputs are converted to this

    def validate(self) -> list[str]:
        errors = []
        if not self.sides:
            errors.append("image.sides: needs at least one side (the reference)")
        if self.patch <= 0:
            errors.append(f"image.patch={self.patch}: must be positive")
        elif bad := [s for s in self.sides if s <= 0 or s % self.patch]:
            errors.append(f"image.sides={self.sides}: {bad} are not positive multiples of image.patch={self.patch}")
        if self.sides and any(s > self.sides[0] for s in self.sides[1:]):
            errors.append(f"image.sides={self.sides}: levels 1..K must not be larger than level 0")
        if self.channels not in (1, 3):
            errors.append(f"image.channels={self.channels}: must be 1 (grayscale) or 3 (RGB)")
        return errors


def build_spec(cfg: ImageConfig) -> Spec:
    """The ladder of an image dataset: level i is a ``sides[i]`` px square, ``patch`` px patches."""
    ref = cfg.sides[0] // cfg.patch
    ladder = tuple(Level({"side": s}, (s // cfg.patch, s // cfg.patch), (s // cfg.patch) ** 2) for s in cfg.sides)
    return Spec("image", (ref, ref), ladder,
                {"patch": cfg.patch, "channels": cfg.channels, "token_dim": cfg.patch * cfg.patch * cfg.channels,
                 "token_dtype": "uint8"})


def decode(data: bytes, spec: Spec):
    """Encoded image bytes (any format PIL reads) -> the largest centred square, as a PIL image in
    the dataset's mode (``L`` or ``RGB``). Refuses a header declaring more than MAX_PIXELS before
    the pixels are decoded."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"image of {w}x{h} px exceeds the {MAX_PIXELS} px limit")
    img.load()
    square = center_square(img.convert("L" if spec.tokenization["channels"] == 1 else "RGB"))
    if square.size[0] < 1:
        raise ValueError("image is empty")
    return square


def center_square(img):
    """Crop the largest centred square (PIL image)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """(H, W, C) -> (H/p * W/p, p*p*C) patches in row-major order of the patch grid."""
    h, w, c = pixels.shape
    gh, gw = h // patch, w // patch
    return (pixels.reshape(gh, patch, gw, patch, c).transpose(0, 2, 1, 3, 4).reshape(gh * gw, patch * patch * c))


def compress(square, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    """Decoded square image -> patches uint8 (N_i, p*p*C) and positions int32 (N_i,) per level.

    Each level is resized from the decoded square (not from the previous level) with
    antialiasing, so level i looks like a camera of ``side_i`` px would have seen it. ``levels``
    computes only those levels, in that order (the server's cascade); None = all.
    """
    from PIL import Image

    patch, channels = spec.tokenization["patch"], spec.tokenization["channels"]
    out = []
    for level in (spec.ladder if levels is None else [spec.ladder[i] for i in levels]):
        side = int(level.params["side"])
        resized = square.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=None)
        pixels = np.asarray(resized, dtype=np.uint8).reshape(side, side, channels)
        out.append((patchify(pixels, patch), consistent_positions(spec.reference_grid, level.grid)))
    return Compressed(out)


def warm_up(spec: Spec) -> None:
    """Import the decoders before the first sample (Pillow and its format plugins, simplejpeg when
    installed). The first PNG costs 26 ms of CPU for them on a quiet machine against 0.4 ms for the
    next; at load ~70 with a busy disk, a fresh child's first sample once took over 5 s."""
    warm_up_decoders()


def level0_as_input(data: bytes, spec: Spec) -> bytes | None:
    """The input's own bytes as level 0's ``jpg`` member when it is a JPEG of exactly the reference
    side in the dataset's channels (``decode`` then crops nothing and ``compress``'s level 0 is its
    pixels), else None."""
    return jpeg_as_level(data, int(spec.ladder[0].params["side"]), int(spec.tokenization["channels"]))


MODALITY = Modality(
    name="image", config_type=ImageConfig, build_spec=build_spec, scan=file_scanner(IMAGE_EXTENSIONS),
    decode=decode, compress=compress, media_types=("image/",), embedding="linear", shared_positions=True,
    level0_as_input=level0_as_input, warm_up=warm_up,
)
