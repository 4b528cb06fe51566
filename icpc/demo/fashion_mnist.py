"""The Fashion-MNIST demo set: a class-balanced subset of Debian's dataset-fashion-mnist as PNGs in ImageFolder layout."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format: big-endian dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def build_fashion_mnist(output: str | os.PathLike, train: int, test: int, seed: int = 0,
                        source_dir: str = FASHION_MNIST_DIR) -> dict[str, int]:
    """Write a class-balanced Fashion-MNIST subset as PNGs in ImageFolder layout (train/, test/).

    ``train``/``test`` are sample counts (0 = all 60,000 / 10,000). The subset is a seeded
    stratified draw, so two builds with the same arguments write identical files.
    """
    from PIL import Image

    src = Path(source_dir)
    if not (src / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(f"Fashion-MNIST not found in {src}; install it with "
                                f"'apt-get install dataset-fashion-mnist' (Debian, MIT licence)")
    counts = {}
    for split, prefix, n in (("train", "train", train), ("test", "t10k", test)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        chosen = _balanced_subset(labels, n, seed)
        for name in FASHION_MNIST_CLASSES:
            (Path(output) / split / name).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            path = Path(output) / split / FASHION_MNIST_CLASSES[labels[i]] / f"{prefix}_{i:05d}.png"
            if not path.exists():
                Image.fromarray(images[i], mode="L").save(path, optimize=False)
        counts[split] = len(chosen)
    return counts


def _balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices, as equal per class as possible, drawn with ``seed``; all when n == 0."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [n // len(classes) + (c < n % len(classes)) for c in range(len(classes))]
    picks = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, per)]
    return np.sort(np.concatenate(picks))
