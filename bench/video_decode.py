"""Benchmark: video compression throughput (clips/s) with and without decord's decode-time downscaling.

    .venv/bin/python bench/video_decode.py --clips 200 --repeats 5

Writes moving Fashion-MNIST clips twice, at their native 64 px and upscaled to 256 px (a camera
larger than the ladder's reference), and compresses every clip at every level of the default
ladder (16x64, 8x64, 8x48, 4x48, 4x32; 2x8x8 tubelets) in this one process, one decord thread.
Each repeat times both modes on the same in-memory bytes, alternating which goes first; the
report gives medians. The machine is shared: read the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icpc.pipeline.modalities.video import MODALITY, VideoConfig, build_spec  # noqa: E402
from icpc.demo.moving_mnist import DIRECTIONS, moving_clip, write_mp4  # noqa: E402
from icpc.demo.fashion_mnist import FASHION_MNIST_DIR, read_idx  # noqa: E402


def make_clips(folder: Path, n: int, scale: int, seed: int = 0) -> list[bytes]:
    """``n`` moving Fashion-MNIST clips of 64*scale px as mp4 bytes."""
    images = read_idx(f"{FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        clip = moving_clip(images[rng.integers(len(images))], list(DIRECTIONS)[i % 8], tuple(rng.integers(0, 64, 2)))
        if scale > 1:
            clip = clip.repeat(scale, axis=1).repeat(scale, axis=2)
        path = folder / f"clip{scale}_{i}.mp4"
        write_mp4(path, clip)
        out.append(path.read_bytes())
    return out


def clips_per_second(clips: list[bytes], decode_scale: bool) -> float:
    spec = build_spec(replace(VideoConfig(), decode_scale=decode_scale))
    started = time.perf_counter()
    for data in clips:
        MODALITY.compress_bytes(data, spec)
    return len(clips) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=200, help="clips per source size")
    p.add_argument("--repeats", type=int, default=5, help="interleaved A/B pairs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {f"{64 * s} px source": make_clips(Path(tmp), args.clips, s) for s in (1, 4)}
    for name, clips in sources.items():
        rates: dict[str, list[float]] = {"decode-time scaling": [], "full decode + PIL": []}
        for r in range(args.repeats):
            order = [True, False] if r % 2 == 0 else [False, True]
            for scaled in order:
                rates["decode-time scaling" if scaled else "full decode + PIL"].append(clips_per_second(clips, scaled))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{name} ({len(clips)} clips, {args.repeats} interleaved pairs): "
              + ", ".join(f"{k} {v:.1f} clips/s" for k, v in med.items())
              + f"; ratio {med['decode-time scaling'] / med['full decode + PIL']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
