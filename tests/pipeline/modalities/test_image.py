"""The image compressor on real Fashion-MNIST images (and an RGB, non-square JPEG made from one)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from icpc.contract import consistent_positions
from icpc.pipeline.modalities.image import MODALITY, ImageConfig, build_spec, patchify
from icpc.demo.fashion_mnist import FASHION_MNIST_DIR, read_idx


def compress(data: bytes, spec, levels=None):
    """Decode then compress, as the pipeline does; the levels' (tokens, positions)."""
    return MODALITY.compress_bytes(data, spec, levels).levels


@pytest.fixture(scope="module")
def fmnist_png() -> tuple[bytes, np.ndarray]:
    pixels = read_idx(f"{FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")[0]
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue(), pixels


def test_every_level_has_its_token_count_and_consistent_positions(fmnist_png):
    spec = build_spec(ImageConfig())
    levels = compress(fmnist_png[0], spec)
    assert [t.shape for t, _ in levels] == [(49, 16), (36, 16), (25, 16), (16, 16), (9, 16)]
    for (tokens, pos), level in zip(levels, spec.ladder):
        assert tokens.dtype == np.uint8
        assert np.array_equal(pos, consistent_positions((7, 7), level.grid))
    # level 4 (12 px, 3x3 patches): patch centres at 2, 6, 10 px of 12 -> 4.67, 14, 23.3 px of 28 -> cells 1, 3, 5
    assert levels[4][1].tolist() == [8, 10, 12, 22, 24, 26, 36, 38, 40]


def test_level0_is_the_image_and_lower_levels_are_downscaled_copies(fmnist_png):
    data, pixels = fmnist_png
    levels = compress(data, build_spec(ImageConfig()))
    assert np.array_equal(levels[0][0], patchify(pixels[:, :, None], 4))
    small = np.asarray(Image.fromarray(pixels).resize((12, 12), Image.Resampling.BICUBIC))
    assert np.array_equal(levels[4][0], patchify(small[:, :, None], 4))
    # a downscaled level keeps the picture: its mean brightness stays close to the original's
    assert abs(levels[4][0].mean() - pixels.mean()) < 8


def test_rgb_non_square_jpeg_is_centre_cropped(fmnist_png):
    _, pixels = fmnist_png
    wide = np.zeros((28, 56, 3), dtype=np.uint8)
    wide[:, 14:42, 0] = pixels  # the garment in the red channel, centred on a black 56 px wide canvas
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="JPEG", quality=95, subsampling=0)  # 4:4:4, no chroma blur
    spec = build_spec(ImageConfig(sides=[28, 14], patch=7, channels=3))
    levels = compress(buf.getvalue(), spec)
    assert levels[0][0].shape == (16, 147) and levels[1][0].shape == (4, 147)
    image = levels[0][0].reshape(4, 4, 7, 7, 3).transpose(0, 2, 1, 3, 4).reshape(28, 28, 3)
    assert np.abs(image[:, :, 0].astype(int) - pixels).mean() < 6  # the crop is the garment (JPEG noise aside)
    assert image[:, :, 1:].mean() < 6


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_undecodable_bytes_raise(data):
    with pytest.raises(Exception):
        compress(data, build_spec(ImageConfig()))


def test_huge_declared_size_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="exceeds"):
        compress(buf.getvalue(), build_spec(ImageConfig()))
