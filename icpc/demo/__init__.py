"""Demo data sets and demos: each builds a real data set offline (Debian/PyPI packages) in a layout
``icpc compress`` reads, and each demo runs one modality end to end (``icpc demo``, ``run.py``).

Kept out of the production pipeline: nothing under ``icpc.pipeline`` imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


# name -> builder(output folder, train samples, test samples, seed) -> {split: count}; each builds
# a demo data set offline from Debian/PyPI packages, in the layout `icpc compress` reads.
DatasetBuilder = Callable[[str, int, int, int], dict[str, int]]


def _fashion_mnist(output: str, train: int, test: int, seed: int) -> dict[str, int]:
    from icpc.demo.fashion_mnist import build_fashion_mnist

    return build_fashion_mnist(output, train, test, seed)


def _spoken_digits(output: str, train: int, test: int, seed: int) -> dict[str, int]:
    from icpc.demo.spoken_digits import build_spoken_digits

    return build_spoken_digits(output, train, test, seed)


def _moving_fashion_mnist(output: str, train: int, test: int, seed: int) -> dict[str, int]:
    from icpc.demo.moving_mnist import build_moving_fashion_mnist

    return build_moving_fashion_mnist(output, train or 3600, test or 400, seed)


def _wordnet_glosses(output: str, train: int, test: int, seed: int) -> dict[str, int]:
    from icpc.demo.wordnet import build_wordnet_glosses

    return build_wordnet_glosses(output, train, test, seed)


def _wallpapers(output: str, train: int, test: int, seed: int) -> dict[str, int]:
    from icpc.demo.wallpapers import build_wallpapers

    return build_wallpapers(output, train, test, seed)


DATASETS: dict[str, DatasetBuilder] = {
    "fashion-mnist": _fashion_mnist,
    "wordnet-glosses": _wordnet_glosses,
    "spoken-digits": _spoken_digits,
    "moving-fashion-mnist": _moving_fashion_mnist,
    # 224 px JPEG crops of Debian's desktop wallpapers, one class per wallpaper (the real-resolution set)
    "wallpapers": _wallpapers,
}


@dataclass(frozen=True)
class Demo:
    """How one modality's demo runs: build its data set, then the shared compress/train/evaluate path."""

    dataset: str                                # a DATASETS name; built into WORKDIR/<dataset>
    input_name: str = ""                        # what to pass as --input, relative to that folder ("" = the folder)
    train: int = 0                              # default training samples
    test: int = 0                               # default test samples
    epochs: int = 8                             # ICPC's epochs
    baseline_epochs: int = 8                    # the baseline's epochs
    compress_sets: tuple[str, ...] = ()         # --set overrides for icpc compress
    train_sets: tuple[str, ...] = ()            # --set overrides for icpc train, both runs
    icpc_sets: tuple[str, ...] = ("level_weights_end=[1]",)   # ICPC's schedule (README "Results" says why)
    schedule: str = "level weights annealed from uniform to level 0"   # ICPC's schedule, in words
    shard_samples: int = 250


DEMOS: dict[str, Demo] = {
    # 4,000 images trained to convergence (30 epochs), the regime where ICPC's variety pays: with
    # 20,000 images and 8 epochs (compute-limited) it did not (README "Results", BENCHMARKS.md)
    "image": Demo("fashion-mnist", train=4000, test=2000, epochs=30, baseline_epochs=30, icpc_sets=(),
                  schedule="uniform draw over the levels"),
    # 10 largest noun lexicographer files x 1,000 glosses (900 train, 100 test each)
    "text": Demo("wordnet-glosses", input_name="glosses.jsonl", train=9000, test=1000, epochs=6),
    # 1600 train clips: batch 32 gives 22 steps per rank and epoch (64 gave 11, too few to learn in 20 epochs)
    "audio": Demo("spoken-digits", train=1600, test=400, epochs=20, train_sets=("batch_size=32",),
                  shard_samples=100),
    "video": Demo("moving-fashion-mnist", train=3600, test=400, epochs=4, shard_samples=200,
                  train_sets=("model.dim=64", "model.depth=2", "batch_size=32")),
}
