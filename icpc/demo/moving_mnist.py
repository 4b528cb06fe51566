"""The moving Fashion-MNIST demo clips: a garment drifting in one of 8 directions with wrap-around, as H.264 mp4."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from icpc.demo.fashion_mnist import FASHION_MNIST_DIR, read_idx

# label -> (dy, dx) unit step; the garment moves SPEED px per frame along it (image rows grow downwards).
DIRECTIONS = {"E": (0, 1), "NE": (-1, 1), "N": (-1, 0), "NW": (-1, -1),
              "W": (0, -1), "SW": (1, -1), "S": (1, 0), "SE": (1, 1)}
CLIP_FRAMES = 16        # frames per clip
CANVAS = 64             # px, square black canvas
SPEED = 2               # px per frame along each moving axis
FPS = 8                 # frames per second written in the container (2 s clips)
CRF = 18                # x264 quality (lower = better); 18 keeps the 28 px garments sharp


def moving_clip(item: np.ndarray, direction: str, start: tuple[int, int], frames: int = CLIP_FRAMES,
                canvas: int = CANVAS, speed: int = SPEED) -> np.ndarray:
    """uint8 ``(frames, canvas, canvas)``: ``item`` pasted at ``start`` (y, x), rolled ``speed`` px per frame.

    np.roll wraps the garment around the edges, so every frame is a garment at a uniformly random
    place on the torus whatever the direction: a single frame carries no information about the
    label, only the motion between frames does.
    """
    dy, dx = DIRECTIONS[direction]
    base = np.zeros((canvas, canvas), dtype=np.uint8)
    base[: item.shape[0], : item.shape[1]] = item
    base = np.roll(base, start, axis=(0, 1))
    return np.stack([np.roll(base, (i * speed * dy, i * speed * dx), axis=(0, 1)) for i in range(frames)])


def write_mp4(path: str | os.PathLike, clip: np.ndarray, fps: int = FPS, crf: int = CRF) -> None:
    """Encode grayscale uint8 ``(T, H, W)`` as H.264 (yuv420p) mp4 with PyAV, atomically (temp name, rename)."""
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def build_moving_fashion_mnist(output: str | os.PathLike, train: int, test: int, seed: int = 0,
                               source_dir: str = FASHION_MNIST_DIR) -> dict[str, int]:
    """Write ``train``/``test`` clips as ``OUTPUT/{train,test}/DIRECTION/clip_NNNNN.mp4``.

    Train clips use Fashion-MNIST training garments, test clips test garments. Directions are
    balanced (clip i of a split gets direction i mod 8 after a seeded shuffle); garment and start
    are seeded draws, so two builds with the same arguments describe the same clips. Existing
    files are kept, so an interrupted build resumes.
    """
    src = Path(source_dir)
    if not (src / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(f"Fashion-MNIST not found in {src}; install it with "
                                f"'apt-get install dataset-fashion-mnist' (Debian, MIT licence)")
    if train < 0 or test < 0 or train + test == 0:
        raise ValueError(f"train={train}, test={test}: need a non-negative number of clips per split, not all zero")
    names = list(DIRECTIONS)
    counts = {}
    for split, prefix, n, stream in (("train", "train", train, 0), ("test", "t10k", test, 1)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        rng = np.random.default_rng([seed, stream])
        items = rng.choice(len(images), size=n, replace=n > len(images))
        labels = rng.permutation(np.arange(n) % len(names))
        starts = rng.integers(0, CANVAS, size=(n, 2))
        for name in names:
            (Path(output) / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = Path(output) / split / names[labels[i]] / f"clip_{i:05d}.mp4"
            if not path.exists():
                write_mp4(path, moving_clip(images[items[i]], names[labels[i]], tuple(starts[i])))
        counts[split] = n
    return counts
