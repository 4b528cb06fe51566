"""Small input folders for the pipeline tests, cut from the session's Fashion-MNIST ImageFolder."""

from __future__ import annotations

import shutil
from pathlib import Path


def small_folder(root: Path, image_folder: Path, per_class: int, classes=("Bag", "Coat")) -> Path:
    """``root/{train,test}/CLASS/*.png``: ``per_class`` training and ``per_class // 3`` test images per class."""
    for split, n in (("train", per_class), ("test", per_class // 3)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for p in sorted((image_folder / split / c).glob("t*.png"))[:n]:
                shutil.copy(p, root / split / c / p.name)
    return root
