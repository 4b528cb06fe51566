"""Level payload codecs (schema 3): which codec each level uses, and a level's tokens <-> one member's bytes.

A codec turns one array into the bytes of one tar member whose suffix names it, so a standard
WebDataset decoder reads it: ``png``/``jpg``/``webp`` (8-bit pictures, Pillow with libjpeg-turbo),
``npy`` (``np.save``, any dtype) and ``npy.zst`` (an ``npy`` file compressed with zstandard; plain
webdataset leaves it as bytes, ``decode_npy_zst`` is the two-line handler). Readers decode only
the codecs the manifest names and never unpickle (``allow_pickle=False``).

The default per modality (``codecs="auto"``), from the measurements in BENCHMARKS.md ("Shard
layout and codecs"):

- pixels (image, video; uint8 blocks): ``npy.zst`` below ``lossy_min_side`` (64 px), exact: at 28
  px it decodes in 20-40 us against 350 us for a PNG through Pillow (as fast as schema 2's zlib;
  PNG made the demo's reader 6-10x slower) for 4% more bytes than PNG (1,329 against 1,272 B per
  level with tar framing) and fewer than JPEG (737 B of payload at q90); ``jpg`` from that side
  up, where JPEG's fixed cost is paid back (at 64 px JPEG q90 takes 0.44x PNG's tar bytes on RGB
  photos, 0.75x on greyscale), at quality 90 for level 0 and 75 for the others (``codec_quality``;
  the codec table: q75 keeps 35.9-38.6 dB at 192-96 px, 1.6-1.9 dB under q85, for 0.77-0.83x its
  bytes; on 224 px photos with level 0 as the input it brings the shards from 3.29x to 2.93x the
  source JPEGs), with Huffman tables fitted to each picture (the same pixels in 6-17% fewer bytes).
  JPEG decodes with simplejpeg when it is installed (1.8-4.5x Pillow's rate), else with Pillow
- spectrograms and other float tokens: ``npy.zst`` (float16 values, zstd level 3)
- text: ``npy`` of ``(2, n)`` uint16 ids and positions; zstd does not pay there, a member's
  data is padded to 512 bytes anyway

A ``jpg`` level marked ``as_input`` stores the input's own JPEG bytes (metadata segments dropped)
when the input already is that level's picture: a JPEG of exactly the reference side with the
dataset's channels (``jpeg_as_level``): level 0 is then the input's pixels (no second JPEG
generation) and costs no encode; its bytes are the input's (on the 224 px q90 wallpaper crops, the
same as a q90 re-encode within 0.04%: BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import io
from typing import Any, Sequence

import numpy as np

from icpc.contract import (CODECS, IMAGE_CODECS, Spec, block_geometry, blocks_shape, blocks_to_tokens, decode_npy,
                           encode_npy, ids_dtype, level_field, tokens_to_blocks)

ZSTD_LEVEL = 3            # zstd's default: 1.7x smaller spectrograms than raw float16 at ~1 GB/s decode
MAX_DECODED_BYTES = 1 << 28   # a payload that claims to decode to more than this (256 MiB) is refused
# JPEG markers (ITU T.81 table B.1). Frames every decoder reads: baseline, extended and progressive
# Huffman (arithmetic-coded and lossless frames are re-encoded instead). Segments dropped from an
# input stored as is: APP1-APP13, APP15 (Exif, ICC, XMP, ...) and COM change no decoded pixel; APP0
# (JFIF) and APP14 (Adobe: the colour transform) are kept because decoders read them.
JPEG_SOI, JPEG_SOS, JPEG_EOI = 0xD8, 0xDA, 0xD9
JPEG_READABLE_FRAMES = {0xC0, 0xC1, 0xC2}
JPEG_DROPPED_SEGMENTS = set(range(0xE1, 0xEE)) | {0xEF, 0xFE}


# ----------------------------------------------------------------------------- choosing codecs


def level_view(spec: Spec, shared_positions: bool) -> str:
    """How a level's tokens are stored: ``blocks`` (the array they tile), ``tokens``, or ``ids_positions`` (text)."""
    if not shared_positions:
        if spec.token_shape:
            raise ValueError(f"modality {spec.modality!r}: schema 3 stores per-sample positions only with id tokens "
                             f"(token shape (), found {spec.token_shape}); declare shared_positions=True")
        return "ids_positions"
    return "blocks" if block_geometry(spec) else "tokens"


def auto_codec(spec: Spec, view: str, level: int, lossy_min_side: int) -> str:
    """The modality's default codec of ``level`` (see the module docstring)."""
    if view == "ids_positions":
        return "npy"
    if view == "blocks" and spec.token_dtype == np.uint8 and _picture_channels(spec) in (1, 3):
        side = int(spec.ladder[level].params.get("side", 0))
        return "jpg" if lossy_min_side and side >= lossy_min_side else "npy.zst"
    return "npy.zst"


def plan_levels(spec: Spec, shared_positions: bool, codecs: str = "auto", quality: Sequence[int] | int = (90, 75),
                lossy_min_side: int = 64, as_input: bool = False) -> list[dict[str, Any]]:
    """The manifest's ``layout.levels``: per level its field, codec, view, stored shape and dtype.

    ``codecs``: ``auto``, one codec for every level, or one per level, comma-separated.
    ``quality``: of the lossy levels, per level; the last value holds for the levels after it.
    ``as_input``: level 0, if ``jpg``, stores an input that already is its picture as the input's
    own bytes (``"as_input": true``; the modality decides per input, see ``jpeg_as_level``).
    """
    qualities = [int(quality)] if isinstance(quality, int) else [int(q) for q in quality] or [90]
    view = level_view(spec, shared_positions)
    names = [c.strip() for c in codecs.split(",")] if codecs != "auto" else []
    if names and len(names) not in (1, len(spec.ladder)):
        raise ValueError(f"codecs={codecs!r}: give one codec or one per level ({len(spec.ladder)} levels)")
    out = []
    for i, level in enumerate(spec.ladder):
        codec = (names[i] if len(names) > 1 else names[0]) if names else auto_codec(spec, view, i, lossy_min_side)
        if codec not in CODECS:
            raise ValueError(f"codecs={codecs!r}: {codec!r} is not one of {sorted(CODECS)} (or auto)")
        entry: dict[str, Any] = {"field": level_field(i, codec), "codec": codec, "view": view, "lossy": CODECS[codec] == "lossy"}
        if view == "blocks":
            block, channels = block_geometry(spec)
            entry.update(shape=list(blocks_shape(level.grid, block, channels)), dtype=str(spec.token_dtype))
        elif view == "ids_positions":
            entry.update(dtype=ids_dtype(spec).str)
        else:
            entry.update(dtype=str(spec.token_dtype))
        if codec in IMAGE_CODECS:
            if view != "blocks" or spec.token_dtype != np.uint8 or _picture_channels(spec) not in (1, 3):
                raise ValueError(f"codecs={codecs!r}: {codec} stores 8-bit pictures of 1 or 3 channels; the "
                                 f"{spec.modality} tokens ({spec.token_dtype}, view {view}) are not; use npy or npy.zst")
            if CODECS[codec] == "lossy":
                entry["quality"] = qualities[min(i, len(qualities) - 1)]
                if not 1 <= entry["quality"] <= 100:
                    raise ValueError(f"codec_quality={list(qualities)}: each must be 1-100")
            if as_input and i == 0 and codec == "jpg":
                entry["as_input"] = True
        out.append(entry)
    return out


def jpeg_as_level(data: bytes, side: int, channels: int) -> bytes | None:
    """``data`` as a level's ``jpg`` member when it is one: a JPEG of ``side`` x ``side`` px whose
    components are the level's ``channels`` (1: greyscale, 3: colour), 8-bit, a frame every decoder
    reads. Returns its bytes without the segments that change no pixel (``JPEG_DROPPED_SEGMENTS``),
    or None when ``data`` is not such a JPEG (the level is then encoded from the pixels).

    Only the headers are parsed (the entropy-coded data after the scan header is copied); the
    caller still decodes the result once with the reader's decoder before it is stored.
    """
    if data[:2] != b"\xff" + bytes([JPEG_SOI]):
        return None
    out, i, frame = [data[:2]], 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                   # fill byte before a marker
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        end = i + 2 + length
        if length < 2 or end > len(data):
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # a start of frame (not DHT, JPG, DAC)
            if marker not in JPEG_READABLE_FRAMES or frame is not None or length < 8:
                return None
            precision, height, width, components = (data[i + 4], int.from_bytes(data[i + 5:i + 7], "big"),
                                                    int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9])
            frame = (precision, height, width, components)
        if marker == JPEG_SOS:
            if frame != (8, side, side, channels):
                return None
            out.append(data[i:])             # the scans and everything after them, unchanged
            return b"".join(out)
        if marker == JPEG_EOI:
            return None
        if marker not in JPEG_DROPPED_SEGMENTS:
            out.append(data[i:end])
        i = end
    return None


def _picture_channels(spec: Spec) -> int | None:
    geometry = block_geometry(spec)
    return None if geometry is None else (geometry[1] or 1)


# ----------------------------------------------------------------------------- one array <-> bytes


def decode_npy_fast(data: bytes) -> np.ndarray:
    """An ``.npy`` payload, its header parsed once per distinct header (every sample of a level has the
    same one): 10 us instead of ``np.load``'s 330 us header parse on a 28 px level. Read-only array."""
    if data[:6] != b"\x93NUMPY" or data[6] != 1:
        return decode_npy(data)                          # other versions: numpy's own parser
    end = 10 + int.from_bytes(data[8:10], "little")
    meta = _npy_header(bytes(data[:end]))
    if meta is None:
        return decode_npy(data)                          # Fortran order: numpy's own reader
    dtype, shape = meta
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f"npy payload holds {len(data) - end} bytes, {count * dtype.itemsize} expected for "
                         f"{dtype}{shape}")
    return np.frombuffer(data, dtype, count, offset=end).reshape(shape)


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, shape) of a version 1.0 ``.npy`` header, checked by numpy; None for Fortran order."""
    f = io.BytesIO(header)
    np.lib.format.read_magic(f)
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    if dtype.hasobject:
        raise ValueError("npy payload holds Python objects (pickle), refused")
    return None if fortran_order else (dtype, tuple(shape))


def encode(array: np.ndarray, codec: str, quality: int = 90) -> bytes:
    """One array as the bytes of a ``codec`` member (pictures: ``(H, W, C)`` or ``(T, H, W, C)`` stacked)."""
    if codec == "npy":
        return encode_npy(array)
    if codec == "npy.zst":
        return _zstd_compressor().compress(encode_npy(array))
    from PIL import Image

    picture = array.reshape(-1, array.shape[-2], array.shape[-1])   # frames stack vertically: (T*H, W, C)
    mode = "L" if picture.shape[-1] == 1 else "RGB"
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(picture[..., 0] if mode == "L" else picture), mode)
    if codec == "png":
        image.save(buf, "PNG", compress_level=6)
    elif codec == "jpg":
        # optimize: Huffman tables fitted to the picture, the same pixels in fewer bytes (224 px photos at
        # q90/q85: 6% fewer at 224 px, 17% at 96 px; 0.1 ms more CPU per encode; bench/results/jpeg_optimize.json)
        image.save(buf, "JPEG", quality=quality, optimize=True)
    else:
        image.save(buf, "WEBP", quality=quality)
    return buf.getvalue()


def decode(data: bytes, codec: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """Inverse of ``encode``; pictures come back in ``shape``. Raises ValueError on bytes that do not decode."""
    try:
        if codec == "npy":
            return decode_npy_fast(data)
        if codec == "npy.zst":
            return decode_npy_zst(data)
        if codec == "jpg" and (simplejpeg := _simplejpeg()) is not None:
            gray = shape is not None and shape[-1] == 1
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB")
            if shape is not None and pixels.size != int(np.prod(shape)):
                raise ValueError(f"jpg picture of {pixels.shape} where {tuple(shape)} was expected")
            return pixels.reshape(shape) if shape is not None else pixels
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG", "WEBP") or image.width * image.height > MAX_DECODED_BYTES:
                raise ValueError(f"a {image.format} picture of {image.size} where {codec} was expected")
            pixels = np.asarray(image)
        if shape is not None and pixels.size != int(np.prod(shape)):
            raise ValueError(f"{codec} picture of {pixels.shape} where {tuple(shape)} was expected")
        return pixels.reshape(shape) if shape is not None else pixels
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder's own error type means the same: bad bytes
        raise ValueError(f"{codec} payload does not decode ({type(exc).__name__}: {exc})") from None


def decode_npy_zst(data: bytes) -> np.ndarray:
    """An ``npy.zst`` member: zstd-compressed ``.npy`` bytes (no pickle). Usable as a webdataset handler body."""
    raw = _zstd_decompressor().decompress(data, max_output_size=MAX_DECODED_BYTES)
    return decode_npy_fast(raw)


def warm_up_decoders() -> None:
    """Import the picture decoders now (Pillow and its format plugins, simplejpeg when installed), not
    in the first sample that needs them."""
    from PIL import Image

    Image.init()
    _simplejpeg()


@functools.lru_cache(maxsize=1)
def _simplejpeg():
    """simplejpeg if installed (``pip install simplejpeg``, in the bench extra), else None: Pillow decodes."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


@functools.lru_cache(maxsize=1)
def _zstd_decompressor():
    import zstandard

    return zstandard.ZstdDecompressor()


@functools.lru_cache(maxsize=1)
def _zstd_compressor():
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL)


# ----------------------------------------------------------------------------- a level's tokens <-> bytes


def encode_level(tokens: np.ndarray, positions: np.ndarray, spec: Spec, level: int, entry: dict[str, Any]) -> bytes:
    """One sample's level as its member's bytes, per the level's ``layout.levels`` entry."""
    view = entry["view"]
    if view == "blocks":
        block, channels = block_geometry(spec)
        array = tokens_to_blocks(tokens, spec.ladder[level].grid, block, channels)
    elif view == "ids_positions":
        array = np.stack([np.asarray(tokens), np.asarray(positions)]).astype(entry["dtype"])
    else:
        array = np.asarray(tokens)
    return encode(array, entry["codec"], entry.get("quality", 90))


def decode_level(data: bytes, spec: Spec, level: int, entry: dict[str, Any], n_tokens: int,
                 shared_positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode_level``: (tokens ``(n, *token_shape)`` of the spec's dtype, positions int32 ``(n,)``).

    Raises ValueError when the payload is not a whole level of ``n_tokens`` tokens.
    """
    view = entry["view"]
    array = decode(data, entry["codec"], entry.get("shape"))
    if view == "ids_positions":
        if array.shape != (2, n_tokens):
            raise ValueError(f"payload holds an array of shape {array.shape}, (2, {n_tokens}) expected")
        return array[0].astype(spec.token_dtype), array[1].astype(np.int32)
    if view == "blocks":
        if list(array.shape) != list(entry["shape"]) or array.dtype != spec.token_dtype:
            raise ValueError(f"payload holds {array.dtype}{array.shape}, {spec.token_dtype}{tuple(entry['shape'])} "
                             f"expected")
        block, channels = block_geometry(spec)
        tokens = blocks_to_tokens(array, spec.ladder[level].grid, block, channels)
    else:
        tokens = array
    if tokens.shape != (n_tokens, *spec.token_shape) or tokens.dtype != spec.token_dtype:
        raise ValueError(f"payload holds {tokens.dtype}{tokens.shape}, {spec.token_dtype}"
                         f"{(n_tokens, *spec.token_shape)} expected")
    if shared_positions is None:
        raise ValueError(f"level {level} has no shared positions in the manifest")
    return tokens, shared_positions
