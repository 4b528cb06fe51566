"""Unit tests for icpc/codecs.py: the codec plan per modality, level round trips, refusals; checked with Pillow/numpy."""

from __future__ import annotations

import io

import numpy as np
import pytest

from icpc.codecs import decode, decode_level, encode, encode_level, plan_levels
from icpc.contract import Level, Spec, consistent_positions
from icpc.pipeline.modalities.image import ImageConfig
from icpc.pipeline.modalities.image import build_spec as image_spec

RNG = np.random.default_rng(0)


def _text_spec(vocab: int = 8000) -> Spec:
    return Spec("text", (64,), (Level({"keep": 1.0}, (), 64), Level({"keep": 0.5}, (), 64)),
                {"token_dtype": "int32", "vocab_size": vocab})


def _audio_spec() -> Spec:
    return Spec("audio", (8, 12), (Level({"frames": 96, "mels": 64}, (8, 12), 96),),
                {"patch": [8, 8], "token_dim": 64, "token_dtype": "float16"})


def test_auto_plan_per_modality():
    rgb = image_spec(ImageConfig(sides=[224, 96, 48], patch=16, channels=3))
    plan = plan_levels(rgb, True)
    assert [e["field"] for e in plan] == ["l0.jpg", "l1.jpg", "l2.npy.zst"]   # lossy from 64 px up
    assert plan[0]["shape"] == [224, 224, 3] and plan[0]["quality"] == 90 and plan[0]["lossy"]
    assert plan[1]["quality"] == 75 and not plan[2]["lossy"]
    assert [e["codec"] for e in plan_levels(rgb, True, lossy_min_side=0)] == ["npy.zst"] * 3
    assert [e["field"] for e in plan_levels(_audio_spec(), True)] == ["l0.npy.zst"]
    text = plan_levels(_text_spec(), False)
    assert [(e["field"], e["view"], e["dtype"]) for e in text] == [("l0.npy", "ids_positions", "<u2")] * 1 + \
        [("l1.npy", "ids_positions", "<u2")]


def test_plan_refuses_codecs_that_do_not_fit_with_the_reason():
    with pytest.raises(ValueError, match="8-bit pictures"):
        plan_levels(_audio_spec(), True, "png")
    with pytest.raises(ValueError, match="one codec or one per level"):
        plan_levels(image_spec(ImageConfig()), True, "png,jpg")
    with pytest.raises(ValueError, match="'gif' is not one of"):
        plan_levels(image_spec(ImageConfig()), True, "gif")
    with pytest.raises(ValueError, match="per-sample positions only with id tokens"):
        plan_levels(_audio_spec(), False)


@pytest.mark.parametrize("codec", ["png", "npy", "npy.zst", "webp", "jpg"])
def test_image_levels_round_trip(codec):
    spec = image_spec(ImageConfig(sides=[32, 16], patch=8, channels=3))
    level = 0
    entry = plan_levels(spec, True, codec)[level]
    y, x = np.mgrid[0:32, 0:32]
    pixels = np.stack([y * 7, x * 7, (x + y) * 3], -1).astype(np.uint8)   # smooth: JPEG stays close
    tokens = pixels.reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(16, 192)
    positions = consistent_positions(spec.reference_grid, spec.ladder[level].grid)
    data = encode_level(tokens, positions, spec, level, entry)
    got, pos = decode_level(data, spec, level, entry, 16, positions)
    assert got.dtype == np.uint8 and got.shape == tokens.shape and pos is positions
    if entry["lossy"]:
        assert np.abs(got.astype(int) - tokens).mean() < 4
    else:
        np.testing.assert_array_equal(got, tokens)
    if codec in ("png", "jpg", "webp"):  # a plain picture any image library opens
        from PIL import Image

        assert Image.open(io.BytesIO(data)).size == (32, 32)


def test_text_ids_and_positions_share_one_member():
    spec = _text_spec()
    entry = plan_levels(spec, False)[1]
    ids, positions = np.array([2, 917, 44, 3], np.int32), np.array([0, 3, 4, 9], np.int32)
    data = encode_level(ids, positions, spec, 1, entry)
    stored = np.load(io.BytesIO(data), allow_pickle=False)
    assert stored.dtype == np.uint16 and stored.tolist() == [ids.tolist(), positions.tolist()]
    got, pos = decode_level(data, spec, 1, entry, 4, None)
    assert got.dtype == np.int32 and got.tolist() == ids.tolist() and pos.dtype == np.int32


def test_spectrograms_stay_exact_float16():
    spec = _audio_spec()
    entry = plan_levels(spec, True)[0]
    tokens = RNG.standard_normal((96, 64)).astype(np.float16)
    got, _ = decode_level(encode_level(tokens, np.arange(96), spec, 0, entry), spec, 0, entry, 96, np.arange(96))
    np.testing.assert_array_equal(got, tokens)


def test_payloads_that_do_not_match_are_refused():
    spec = image_spec(ImageConfig())
    entry = plan_levels(spec, True, "png")[0]
    other = encode(np.zeros((24, 24, 1), np.uint8), "png")
    with pytest.raises(ValueError, match=r"expected"):
        decode_level(other, spec, 0, entry, 49, np.arange(49))
    with pytest.raises(ValueError, match="does not decode"):
        decode(b"\x89PNG not really", "png", (28, 28, 1))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode(pickled.getvalue(), "npy")
    zst = plan_levels(spec, True)[0]                     # npy.zst at 28 px: a wrong shape is refused too
    with pytest.raises(ValueError, match="expected"):
        decode_level(encode(np.zeros((24, 24, 1), np.uint8), "npy.zst"), spec, 0, zst, 49, np.arange(49))


def test_video_levels_are_frame_stacks_jpeg_from_64_px():
    from icpc.pipeline.modalities.video import VideoConfig
    from icpc.pipeline.modalities.video import build_spec as video_spec

    spec = video_spec(VideoConfig())                      # frames 16/8/8/4/4 at 64/64/48/48/32 px, tubelets 2x8x8
    plan = plan_levels(spec, True)
    assert [e["codec"] for e in plan] == ["jpg", "jpg", "npy.zst", "npy.zst", "npy.zst"]
    assert plan[0]["shape"] == [16, 64, 64, 1]
    plan = plan_levels(spec, True, "png")
    level = 4
    frames = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :, None], 32, 1).repeat(4, 0)
    tokens = frames.reshape(2, 2, 4, 8, 4, 8, 1).transpose(0, 2, 4, 1, 3, 5, 6).reshape(32, 128)
    data = encode_level(tokens, np.arange(32), spec, level, plan[level])
    from PIL import Image

    assert Image.open(io.BytesIO(data)).size == (32, 4 * 32)   # the 4 frames stacked vertically
    got, _ = decode_level(data, spec, level, plan[level], 32, np.arange(32))
    np.testing.assert_array_equal(got, tokens)


# ----------------------------------------------------------------------------- level 0 as the input's own JPEG


def _jpeg(side: int = 32, mode: str = "RGB", **save) -> bytes:
    """A smooth picture of ``side`` px as JPEG bytes (Pillow), with any ``save`` options (exif, comment, ...)."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    pixels = np.stack([y * 5, x * 5, (x + y) * 2], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=88, **save)
    return buf.getvalue()


def _segments(data: bytes) -> list[int]:
    """The markers of ``data``'s header segments before its scan (ITU T.81 B.1)."""
    out, i = [], 2
    while data[i + 1] != 0xDA:
        out.append(data[i + 1])
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return out


def test_a_jpeg_of_the_level_is_kept_as_is_without_its_metadata():
    from PIL import Image

    from icpc.codecs import jpeg_as_level

    exif = Image.Exif()
    exif[0x0112] = 6                                  # orientation: rotated; no decoder here applies it
    data = _jpeg(exif=exif.tobytes(), comment=b"camera notes", icc_profile=b"\0" * 300)
    assert {0xE1, 0xE2, 0xFE} <= set(_segments(data))
    kept = jpeg_as_level(data, 32, 3)
    assert kept is not None and len(kept) < len(data) and 0xE0 in _segments(kept)
    assert not {0xE1, 0xE2, 0xFE} & set(_segments(kept))
    assert kept.endswith(data[data.index(b"\xff\xda"):])         # the scan is copied byte for byte
    # the same pixels through both decoders (the reader's, and Pillow's on the input)
    np.testing.assert_array_equal(decode(kept, "jpg", (32, 32, 3)), np.asarray(Image.open(io.BytesIO(data))))
    assert jpeg_as_level(_jpeg(progressive=True), 32, 3) is not None
    assert jpeg_as_level(_jpeg(mode="L"), 32, 1) is not None


@pytest.mark.parametrize("case", ["other side", "grey for colour", "colour for grey", "cmyk", "png", "truncated",
                                  "not a jpeg"])
def test_an_input_that_is_not_the_level_is_encoded_instead(case):
    from PIL import Image

    from icpc.codecs import jpeg_as_level

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, "PNG")
    data, channels = {"other side": (_jpeg(side=40), 3), "grey for colour": (_jpeg(mode="L"), 3),
                      "colour for grey": (_jpeg(), 1), "cmyk": (_jpeg(mode="CMYK"), 3), "png": (buf.getvalue(), 3),
                      "truncated": (_jpeg()[:150], 3), "not a jpeg": (b"\xff\xd8 plain text", 3)}[case]
    assert jpeg_as_level(data, 32, channels) is None


def test_plan_marks_only_a_jpeg_level_0_as_input():
    rgb = image_spec(ImageConfig(sides=[224, 96, 48], patch=16, channels=3))
    assert [e.get("as_input", False) for e in plan_levels(rgb, True, as_input=True)] == [True, False, False]
    assert not any(e.get("as_input") for e in plan_levels(rgb, True))
    assert not any(e.get("as_input") for e in plan_levels(rgb, True, "png", as_input=True))


def test_jpeg_levels_use_fitted_huffman_tables_same_pixels_fewer_bytes():
    """A real photograph (ukui-wallpapers, in .ci/run's apt line) at two ladder sides: the level's JPEG decodes
    to exactly the pixels of Pillow's standard-table JPEG at the same quality, in fewer bytes."""
    from pathlib import Path

    from PIL import Image

    from icpc.codecs import encode

    photo = Path("/usr/share/backgrounds/2004default.jpg")
    if not photo.exists():
        raise FileNotFoundError(f"{photo} missing: apt-get install -y ukui-wallpapers (see .ci/run)")
    image = Image.open(photo).convert("RGB")
    image = image.crop((0, 0, min(image.size), min(image.size)))
    for side, quality in ((224, 90), (96, 75)):
        pixels = np.asarray(image.resize((side, side), Image.BICUBIC))
        ours = encode(pixels, "jpg", quality)
        standard = io.BytesIO()
        Image.fromarray(pixels).save(standard, "JPEG", quality=quality)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ours))),   # one decoder for both
                                      np.asarray(Image.open(io.BytesIO(standard.getvalue()))))
        assert len(ours) < standard.tell(), (side, len(ours), standard.tell())
