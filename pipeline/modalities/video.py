"""The video modality: spatio-temporal resolution modulation; decord decodes only the frames the levels keep."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from icpc.contract import Level, Spec, consistent_positions
from icpc.pipeline.modalities.base import Compressed, Modality
from icpc.pipeline.scan import file_scanner

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
# Frames larger than this many pixels are refused before a batch is decoded at full size
# (8K UHD is 33.2 Mpx); one 4-byte-per-pixel frame of this size is already ~144 MB.
MAX_FRAME_PIXELS = 36_000_000
# decord threads per reader: the Ray job runs one task per half core, so more threads only
# oversubscribe the CPU (and make the throughput figures depend on the machine's core count).
DECODE_THREADS = 1
# Codec tags that mark AV1 in MP4 (sample entry) and Matroska/WebM (CodecID); decord 0.6 has no
# AV1 decoder and only says "cannot find video stream", so the reject reason names the codec.
_AV1_TAGS = (b"av01", b"V_AV1")
# px; decode-time output widths are multiples of this (see decode_size)
DECODE_WIDTH_ALIGN = 32


@dataclass
class VideoConfig:
    """Ladder and tokenization of a video dataset: level i keeps ``frames[i]`` frames of ``sides[i]`` px."""

    frames: list[int] = field(default_factory=lambda: [16, 8, 8, 4, 4])     # frames per level; [0] = reference
    sides: list[int] = field(default_factory=lambda: [64, 64, 48, 48, 32])  # px per level (square); [0] = reference
    tubelet_frames: int = 2       # frames per tubelet (t); every frames[i] must be a multiple of it
    patch: int = 8                # px per tubelet side (p); every sides[i] must be a multiple of it
    channels: int = 1             # 1 = grayscale (ITU-R 601 luma), 3 = RGB
    decode_scale: bool = True     # let decord downscale while decoding, to the largest side asked for,
                                  # instead of decoding at full size; PIL resizes the rest either way

    def validate(self) -> list[str]:
        errors = []
        if not self.frames or len(self.frames) != len(self.sides):
            errors.append(f"video.frames={self.frames}, video.sides={self.sides}: need one frames and one side "
                          f"per level (equal, non-empty lists)")
            return errors
        if self.tubelet_frames <= 0 or self.patch <= 0:
            errors.append(f"video.tubelet_frames={self.tubelet_frames}, video.patch={self.patch}: must be positive")
            return errors
        if bad := [f for f in self.frames if f <= 0 or f % self.tubelet_frames]:
            errors.append(f"video.frames={self.frames}: {bad} are not positive multiples of "
                          f"video.tubelet_frames={self.tubelet_frames}")
        if bad := [s for s in self.sides if s <= 0 or s % self.patch]:
            errors.append(f"video.sides={self.sides}: {bad} are not positive multiples of video.patch={self.patch}")
        if any(f > self.frames[0] for f in self.frames[1:]) or any(s > self.sides[0] for s in self.sides[1:]):
            errors.append(f"video.frames={self.frames}, video.sides={self.sides}: levels 1..K must not have more "
                          f"frames or a larger side than level 0")
        if self.channels not in (1, 3):
            errors.append(f"video.channels={self.channels}: must be 1 (grayscale) or 3 (RGB)")
        return errors


def build_spec(cfg: VideoConfig) -> Spec:
    """Level i is ``frames[i]`` x ``sides[i]`` x ``sides[i]``, cut into ``t x p x p`` tubelets."""
    t, p = cfg.tubelet_frames, cfg.patch
    ladder = tuple(Level({"frames": f, "side": s}, (f // t, s // p, s // p), (f // t) * (s // p) ** 2)
                   for f, s in zip(cfg.frames, cfg.sides))
    return Spec("video", ladder[0].grid, ladder,
                {"tubelet": [t, p, p], "channels": cfg.channels, "token_dim": t * p * p * cfg.channels,
                 "token_dtype": "uint8", "decode_scale": cfg.decode_scale})


# ----------------------------------------------------------------------------- pure functions


def frame_indices(n_decoded: int, n_frames: int) -> np.ndarray:
    """Indices of ``n_frames`` frames spread uniformly over a clip of ``n_decoded`` frames.

    Frame i is the one holding the centre of the i-th of ``n_frames`` equal segments,
    ``floor((i + 1/2) * n_decoded / n_frames)`` in exact integer arithmetic, so 8 of 16 frames are
    1, 3, ..., 15 and 4 of 16 are 2, 6, 10, 14. int64 ``(n_frames,)``, strictly increasing.
    """
    if n_frames <= 0 or n_decoded < n_frames:
        raise ValueError(f"cannot pick {n_frames} frames from {n_decoded}")
    return (2 * np.arange(n_frames) + 1) * n_decoded // (2 * n_frames)


def tubelets(frames: np.ndarray, t: int, p: int) -> np.ndarray:
    """(F, S, S, C) -> (F/t * S/p * S/p, t*p*p*C) tubelets, row-major over the (t, y, x) grid.

    A tubelet's values are ordered (frame, row, column, channel).
    """
    f, h, w, c = frames.shape
    x = frames.reshape(f // t, t, h // p, p, w // p, p, c).transpose(0, 2, 4, 1, 3, 5, 6)
    return x.reshape((f // t) * (h // p) * (w // p), t * p * p * c)


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., channels) uint8; one channel is ITU-R 601 luma (as PIL's "L")."""
    if channels == 3:
        return rgb
    wide = rgb.astype(np.int32)
    luma = wide[..., 0] * 299 + wide[..., 1] * 587 + wide[..., 2] * 114
    return ((luma + 500) // 1000).astype(np.uint8)[..., None]


def center_crop(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, C) -> (F, S, S, C), the largest centred square, S = min(H, W)."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frames[:, top:top + s, left:left + s]


def decode_size(height: int, width: int, side: int) -> tuple[int, int] | None:
    """(height, width) px for decord to decode a ``height x width`` video to, so that the centred
    square can then be cut and resized to ``side`` px; None when scaling would not save anything.

    decord 0.6 returns 4-channel garbage for output widths whose RGB rows ffmpeg pads (48 or
    72 px fail, dmlc/decord#336), so the width is rounded up to a multiple of DECODE_WIDTH_ALIGN
    and the aspect ratio kept; PIL resizes the few px left.
    """
    scale = side / min(height, width)
    w = -(-round(width * scale) // DECODE_WIDTH_ALIGN) * DECODE_WIDTH_ALIGN
    if w >= width:
        return None
    return max(side, round(height * w / width)), w


# ----------------------------------------------------------------------------- decoding


def open_reader(data: bytes, width: int = -1, height: int = -1):
    """A decord VideoReader over encoded bytes (decoding to ``width`` x ``height`` px when given)."""
    import decord

    try:
        return decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height,
                                  num_threads=DECODE_THREADS)
    except (decord.DECORDError, RuntimeError) as exc:
        raise ValueError(f"decord cannot read this file: {_decord_message(exc)}{_ffmpeg_reason(data)}"
                         f"{_codec_hint(data)}") from None


def read_frames(reader, indices: np.ndarray, data: bytes) -> np.ndarray:
    """Decode only ``indices`` with ``get_batch``: uint8 (len(indices), H, W, 3)."""
    import decord

    try:
        return reader.get_batch([int(i) for i in indices]).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise ValueError(f"decord cannot decode frames {indices.tolist()}: {_decord_message(exc)}"
                         f"{_codec_hint(data)}") from None


def _decord_message(exc: Exception) -> str:
    """The last line of a decord error, without its timestamp and source path."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[-1])[:300]


def _ffmpeg_reason(data: bytes) -> str:
    """What ffmpeg (through PyAV) says about bytes decord refused; decord's own message over bytes is
    only "Error reading N bytes" (the reason goes to its C++ log). "" when PyAV is absent or opens it."""
    try:
        import av
    except ImportError:
        return ""
    try:
        with av.open(io.BytesIO(data)) as container:
            return "" if container.streams.video else " (ffmpeg: the file has no video stream)"
    except (av.FFmpegError, ValueError, OSError) as exc:
        return f" (ffmpeg: {getattr(exc, 'strerror', None) or exc})"


def _codec_hint(data: bytes) -> str:
    head = data[:65536]
    if any(tag in head for tag in _AV1_TAGS):
        return " (the video is AV1, which decord 0.6 cannot decode; re-encode it as H.264 or VP9)"
    return ""


class Clip:
    """A video opened for decoding: frames are decoded when first asked for and kept, so a server
    that tries level 4, then level 3, decodes each frame once.

    Frame indices refer to the frames decord actually indexes (its packet count, not the
    container header's frame count or duration). With ``decode_scale`` decord already scales
    frames to the largest side asked for (``decode_size``) while decoding; each frame is kept as
    its centred square (uint8 RGB ``(S, S, 3)``). A clip with fewer than ``min_frames`` frames, or
    frames over MAX_FRAME_PIXELS, is refused here, before any batch is decoded.
    """

    def __init__(self, data: bytes, max_side: int, decode_scale: bool, min_frames: int = 1):
        if not data:
            raise ValueError("the file is empty")
        self.data = data
        native = open_reader(data)
        self.n = len(native)
        if self.n < min_frames:
            raise ValueError(f"fewer than {min_frames} frames decode ({self.n})")
        # decord exposes no frame size before decoding: frame 0 (a key frame) tells it, before any batch
        height, width = native[0].shape[:2]
        if height * width > MAX_FRAME_PIXELS:
            raise ValueError(f"frames of {width}x{height} px exceed the {MAX_FRAME_PIXELS} px limit")
        size = decode_size(height, width, max_side) if decode_scale else None
        self.reader = open_reader(data, width=size[1], height=size[0]) if size else native
        self.cache: dict[int, np.ndarray] = {}

    def squares(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), S, S, 3)``: one ``get_batch`` decodes the frames not seen yet."""
        missing = np.setdiff1d(np.asarray(indices), np.fromiter(self.cache, dtype=np.int64, count=len(self.cache)))
        if len(missing):
            for j, frame in zip(missing, center_crop(read_frames(self.reader, missing, self.data))):
                self.cache[int(j)] = frame
        return np.stack([self.cache[int(j)] for j in indices])

    def level(self, frames: int, side: int) -> np.ndarray:
        """``frames`` uniformly spaced frames resized to ``side`` px: uint8 ``(frames, side, side, 3)``."""
        from PIL import Image

        chosen = self.squares(frame_indices(self.n, frames))
        if chosen.shape[1] != side:
            chosen = np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.BICUBIC))
                               for f in chosen])
        return chosen


def decode_levels(data: bytes, frames: list[int], sides: list[int], decode_scale: bool,
                  min_frames: int = 0) -> list[np.ndarray]:
    """Decode ``frames[i]`` uniformly spaced frames of ``sides[i]`` px for every level i.

    Returns uint8 RGB ``(frames[i], sides[i], sides[i], 3)`` per level. One ``get_batch`` decodes the
    union of the indices the levels need (PIL resizes each to its side), one pass, not one per
    side: a second decord reader decodes the clip again, which costs more than the resize it
    saves (bench/video_decode.py). A clip with fewer than ``max(min_frames, *frames)`` frames is refused.
    """
    clip = Clip(data, max(sides), decode_scale, max(min_frames, *frames))
    clip.squares(np.unique(np.concatenate([frame_indices(clip.n, f) for f in frames])))
    return [clip.level(f, s) for f, s in zip(frames, sides)]


def decode(data: bytes, spec: Spec) -> Clip:
    """Open an encoded video for decoding; every clip needs the reference frame count."""
    return Clip(data, max(int(lv.params["side"]) for lv in spec.ladder),
                bool(spec.tokenization.get("decode_scale", True)), int(spec.ladder[0].params["frames"]))


def compress(clip: Clip, spec: Spec, levels: Sequence[int] | None = None) -> Compressed:
    """Opened clip -> tubelets uint8 (N_i, t*p*p*C) and positions int32 (N_i,) per level.

    A tubelet of a level with fewer frames or a smaller side takes the reference (t, y, x) cell
    that contains its centre (``consistent_positions``). ``levels`` computes only those levels, in
    that order (the server's cascade); None = all. The frames of every level asked for are
    decoded in one ``get_batch``.
    """
    tok = spec.tokenization
    t, p, _ = tok["tubelet"]
    ladder = spec.ladder if levels is None else [spec.ladder[i] for i in levels]
    clip.squares(np.unique(np.concatenate([frame_indices(clip.n, int(lv.params["frames"])) for lv in ladder])))
    return Compressed([(tubelets(to_channels(clip.level(int(lv.params["frames"]), int(lv.params["side"])),
                                             tok["channels"]), t, p),
                        consistent_positions(spec.reference_grid, lv.grid)) for lv in ladder])


def warm_up(spec: Spec) -> None:
    """Import decord, Pillow and PyAV (when installed) before the first sample, not on its ``sample_timeout_s``."""
    import decord  # noqa: F401

    from icpc.codecs import warm_up_decoders

    warm_up_decoders()
    with contextlib.suppress(ImportError):
        import av  # noqa: F401


MODALITY = Modality(
    name="video", config_type=VideoConfig, build_spec=build_spec, scan=file_scanner(VIDEO_EXTENSIONS),
    decode=decode, compress=compress, media_types=("video/",), embedding="linear", shared_positions=True,
    warm_up=warm_up,
)
