"""The real-resolution photo set: 224 px JPEG crops of Debian's desktop wallpapers, one class per wallpaper.

    apt-get install -y plasma-workspace-wallpapers mate-backgrounds ukui-wallpapers gnome-backgrounds
    icpc datasets wallpapers --output data/photos224          # ~7,000 crops of 72 wallpapers, ~1 CPU-min
    icpc compress --modality image --input data/photos224/images --output runs/photos224 \
        --set image.sides=224,192,160,128,96 --set image.patch=16 --set image.channels=3

The task: which wallpaper is this 224 px crop from (72 classes, photographs and artwork). Each
wallpaper is cut into a grid of square cells (side = half its short side); per wallpaper one
cell is the test region, one the val region, the rest train, so **no pixel of a source is in
two splits** (the crops of one split never overlap another split's). Crops are drawn inside
their cell at four scales (1, 0.7, 0.5, 0.35 of the cell side, never below 224 source pixels)
and positions, from (seed, wallpaper, cell): the same arguments write the same files.

Finding the wallpapers: the packages ship one picture several times (Plasma's 11 screen sizes
are links to one file, MATE's Elephants comes at three sizes, GNOME has light and dark
variants, Ubuntu MATE four tints of one design). Files are first deduplicated by content
(sha256), then merged into one wallpaper when their names say so (a Plasma package folder, a
``_WIDTHxHEIGHT``, ``-d``/``-l`` or ``-Dark``/``-Light`` suffix) or their 256-bit difference
hashes (grey 16x17 thumbnails) are near-identical at the same pixel size; the largest file of each wallpaper is its source.
Left out, and listed: sources with a short side under 448 px (two 224 px cells), Plasma's
``screenshot`` thumbnails, and pictures nearly uniform once their transparency is flattened over
grey (GNOME's symbolic, Kay's dark variant). From the four packages: 72 wallpapers.

Output: ``OUTPUT/images/{train,val,test}/LABEL/*.jpg`` (JPEG quality 90, 4:2:0, what cameras and
datasets ship), ``OUTPUT/crops.csv`` (every crop's source box in source pixels) and
``OUTPUT/sources.json`` (every file found, what it was merged into or why it was left out).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- constants

WALLPAPER_ROOTS = ("/usr/share/wallpapers", "/usr/share/backgrounds")   # where the four packages install
WALLPAPER_PACKAGES = "plasma-workspace-wallpapers mate-backgrounds ukui-wallpapers gnome-backgrounds"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}   # raster only (gnome-backgrounds' SVGs are left out)
CROP = 224                     # output side in pixels (what ViT-S/16 and ResNets train at)
JPEG_QUALITY = 90              # the source set: q90, Pillow's default 4:2:0 chroma subsampling
SCALES = (1.0, 0.7, 0.5, 0.35)  # crop side / cell side, cycled per cell so every cell has every scale
MAX_CELL = 896                 # sources are first shrunk so a cell is at most 4 x 224 px (crops downscale <= 4x)
MIN_SHORT_SIDE = 2 * CROP      # two cells of 224 px along the short side, at least
DHASH_SIZE = 16                # 16 x 16 = 256-bit difference hash
MIN_CONTRAST = 8.0             # grey std (0-255) under which a flattened source is left out as nearly uniform
SAME_PICTURE_BITS = 24         # same-size files whose hashes differ by this little are tints of one design;
                               # measured on the four packages: Ubuntu MATE's tints differ by 19-24 bits,
                               # the closest pair of distinct same-size wallpapers by 38
DEFAULT_TRAIN, DEFAULT_TEST = 5000, 800   # crops when --train / --test are 0 (val gets as many as test)
_SIZE_SUFFIX = re.compile(r"(_\d+x\d+|-[dl]|-Dark|-Light)$")   # Elephants_3840x2160, adwaita-d, MATE-Stripes-Dark


# ----------------------------------------------------------------------------- types


@dataclass
class SourceFile:
    """One raster file found under a root, after its bytes were hashed."""

    path: str
    sha256: str
    width: int
    height: int
    group: str                      # the wallpaper its name puts it in (sanitised relative name)
    dhash: int = 0                  # 256-bit difference hash of the grey picture
    links: list[str] = field(default_factory=list)   # other paths with the same bytes


@dataclass
class Wallpaper:
    """One class: a picture and every file that shows it."""

    label: str
    source: str                     # the largest file: what the crops are cut from
    width: int
    height: int
    sha256: str
    files: list[str]                # every path merged into this wallpaper (bytes-identical links included)


# ----------------------------------------------------------------------------- pure functions


def group_name(rel: str) -> str:
    """The wallpaper a file's name puts it in: ``Altai/contents/images/5120x2880.png`` -> ``Altai``,
    ``mate/abstract/Elephants_3840x2160.jpg`` -> ``mate-abstract-Elephants``, ``gnome/wood-d.webp`` ->
    ``gnome-wood``."""
    parts = rel.replace("\\", "/").split("/")
    if "contents" in parts[:-1]:   # a Plasma wallpaper package: NAME/contents/images[_dark]/WxH.ext
        parts = parts[:parts.index("contents")]
    else:
        parts[-1] = _SIZE_SUFFIX.sub("", os.path.splitext(parts[-1])[0])
    return re.sub(r"[^A-Za-z0-9_\-]", "_", "-".join(p for p in parts if p))


def thumbnail_hash(thumb: np.ndarray) -> int:
    """256-bit difference hash of a grey thumbnail: shrunk to 16 x 17 by block means, bit = a
    block brighter than its right neighbour. Resized copies and tints of a picture keep it."""
    h, w = thumb.shape
    ys = np.linspace(0, h, DHASH_SIZE + 1).astype(int)
    xs = np.linspace(0, w, DHASH_SIZE + 2).astype(int)
    grid = np.array([[thumb[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(DHASH_SIZE + 1)]
                     for i in range(DHASH_SIZE)])
    bits = (grid[:, 1:] > grid[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def flatten(im: "Image.Image") -> "Image.Image":
    """RGB of any Pillow image; transparency composited over mid grey. (MATE ships white or black
    overlays meant for the desktop colour: over black, MATE-Stripes-Dark would be all black.)"""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", im.size, (128, 128, 128))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return im.convert("RGB")


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def merge_groups(files: list[SourceFile], max_bits: int = SAME_PICTURE_BITS) -> list[list[SourceFile]]:
    """Files grouped into wallpapers: same name group, or same pixel size with difference hashes
    within ``max_bits`` (tints of one design); union-find, sorted by label."""
    parent = list(range(len(files)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(files)):
        for j in range(i):
            same_size = (files[i].width, files[i].height) == (files[j].width, files[j].height)
            if files[i].group == files[j].group or (same_size and hamming(files[i].dhash, files[j].dhash) <= max_bits):
                parent[root(i)] = root(j)
    groups: dict[int, list[SourceFile]] = {}
    for i, f in enumerate(files):
        groups.setdefault(root(i), []).append(f)
    return sorted(groups.values(), key=lambda g: min(f.group for f in g))


def choose_source(group: list[SourceFile]) -> Wallpaper:
    """The wallpaper of a group: its largest file (most pixels; the first path on a tie) is the source;
    its label is the alphabetically first name group."""
    best = min(group, key=lambda f: (-f.width * f.height, f.path))
    files = sorted(p for f in group for p in [f.path, *f.links])
    return Wallpaper(min(f.group for f in group), best.path, best.width, best.height, best.sha256, files)


def cell_grid(width: int, height: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of the square cells of a ``width x height`` picture, row-major, centred.

    side = half the short side, so there are at least 2 x 2 cells (Plasma's 16:10 gives 3 x 2)."""
    side = min(width, height) // 2
    cols, rows = width // side, height // side
    x0, y0 = (width - cols * side) // 2, (height - rows * side) // 2
    return [(x0 + c * side, y0 + r * side, side) for r in range(rows) for c in range(cols)]


def cell_splits(n_cells: int, rng: np.random.Generator) -> list[str]:
    """The split of each cell: one test, one val, the rest train, at places drawn with ``rng``."""
    order = rng.permutation(n_cells)
    splits = ["train"] * n_cells
    splits[order[0]], splits[order[1]] = "test", "val"
    return splits


def crop_boxes(cell: tuple[int, int, int], count: int, rng: np.random.Generator,
               min_side: int = CROP) -> list[tuple[int, int, int]]:
    """``count`` square boxes (x, y, side) inside ``cell``, cycling through ``SCALES`` (sides never
    under ``min_side``), at positions drawn with ``rng``."""
    cx, cy, cs = cell
    boxes = []
    for i in range(count):
        side = min(cs, max(min_side, round(cs * SCALES[i % len(SCALES)])))
        x, y = rng.integers(0, cs - side + 1, size=2)
        boxes.append((cx + int(x), cy + int(y), side))
    return boxes


def label_seed(seed: int, label: str) -> int:
    """A per-wallpaper seed that does not move when other wallpapers are added or removed."""
    return zlib.crc32(f"{seed}:{label}".encode())


# ----------------------------------------------------------------------------- finding the wallpapers


def find_wallpapers(roots: tuple[str, ...] | list[str] = WALLPAPER_ROOTS
                    ) -> tuple[list[Wallpaper], list[dict]]:
    """The distinct wallpapers under ``roots`` and every file left out ({path, reason})."""
    from PIL import Image

    by_hash: dict[str, SourceFile] = {}
    left_out: list[dict] = []
    for root in roots:
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for path in sorted(p for p in root_path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()):
            rel = path.relative_to(root_path).as_posix()
            if path.stem == "screenshot":
                left_out.append({"path": str(path), "reason": "a package thumbnail (screenshot)"})
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in by_hash:   # the same bytes again (Plasma links 11 screen sizes to one file)
                known, name = by_hash[digest], group_name(rel)
                if Path(known.path).is_symlink() and not path.is_symlink():   # name the file, not a link
                    known.links.append(known.path)
                    known.path = str(path)
                else:
                    known.links.append(str(path))
                known.group = min(known.group, name, key=lambda g: (len(g), g))   # calla over calla-copy
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
                    if min(width, height) < MIN_SHORT_SIDE:
                        left_out.append({"path": str(path), "reason": f"{width}x{height}: short side under "
                                         f"{MIN_SHORT_SIDE} px (two {CROP} px cells)"})
                        continue
                    im.draft("RGB", (width // 8, height // 8))   # JPEG: decode at 1/8 scale, enough for 64x64
                    thumb = np.asarray(flatten(im).convert("L").resize((64, 64), Image.Resampling.BOX), np.float32)
            except (OSError, ValueError) as exc:
                left_out.append({"path": str(path), "reason": f"cannot be decoded: {exc}"})
                continue
            if thumb.std() < MIN_CONTRAST:
                left_out.append({"path": str(path), "reason": f"nearly uniform (grey std {thumb.std():.1f} < "
                                 f"{MIN_CONTRAST}) once its transparency is flattened over grey"})
                continue
            by_hash[digest] = SourceFile(str(path), digest, width, height, group_name(rel), thumbnail_hash(thumb))
    if not by_hash:
        raise FileNotFoundError(f"no wallpapers found under {list(roots)}; install them with "
                                f"'apt-get install -y {WALLPAPER_PACKAGES}' (Debian, free licences)")
    return [choose_source(g) for g in merge_groups(list(by_hash.values()))], left_out


# ----------------------------------------------------------------------------- cutting crops


def load_source(path: str) -> tuple["Image.Image", float]:
    """The source as RGB (see ``flatten``), shrunk so a cell is at most ``MAX_CELL``
    px; and the factor from those pixels back to the file's."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = flatten(im)
    short = min(rgb.size)
    if short <= 2 * MAX_CELL:
        return rgb, 1.0
    factor = short / (2 * MAX_CELL)
    size = (round(rgb.width / factor), round(rgb.height / factor))
    return rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), factor


def cut_wallpaper(job: tuple[Wallpaper, str, int, int, int]) -> list[dict]:
    """Cut one wallpaper into JPEG crops under ``images/``: the crops.csv rows it wrote."""
    from PIL import Image

    wall, out, seed, per_train_cell, per_eval_cell = job
    image, factor = load_source(wall.source)
    rng = np.random.default_rng(label_seed(seed, wall.label))
    cells = cell_grid(image.width, image.height)
    rows = []
    for c, (cell, split) in enumerate(zip(cells, cell_splits(len(cells), rng))):
        count = per_train_cell if split == "train" else per_eval_cell
        folder = Path(out) / "images" / split / wall.label
        folder.mkdir(parents=True, exist_ok=True)
        for i, (x, y, side) in enumerate(crop_boxes(cell, count, rng)):
            name = f"c{c}_{i:03d}.jpg"   # the folder names the label: keys stay short (ustar: 100 B)
            crop = image.resize((CROP, CROP), Image.Resampling.LANCZOS, box=(x, y, x + side, y + side),
                                reducing_gap=3.0)
            crop.save(folder / name, quality=JPEG_QUALITY, subsampling="4:2:0")
            rows.append({"split": split, "label": wall.label, "file": f"images/{split}/{wall.label}/{name}",
                         "source": wall.source, "cell": c, "x": round(x * factor), "y": round(y * factor),
                         "side": round(side * factor)})
    return rows


def build_wallpapers(output: str | os.PathLike, train: int = 0, test: int = 0, seed: int = 0,
                     roots: tuple[str, ...] | list[str] = WALLPAPER_ROOTS, workers: int = 0) -> dict[str, int]:
    """Build the set into ``output`` (see the module docstring); returns crops per split.

    ``train`` / ``test``: about how many train / test crops (0 = 5,000 / 800); val gets as many
    as test. A folder built with the same arguments is kept as it is; one built with others is
    refused (remove it or pick another ``output``). ``workers`` processes cut the crops (0 = up
    to 2); the files do not depend on it.
    """
    out = Path(output)
    config = {"train": train or DEFAULT_TRAIN, "test": test or DEFAULT_TEST, "seed": seed,
              "roots": [str(r) for r in roots], "crop": CROP, "quality": JPEG_QUALITY, "scales": list(SCALES)}
    summary = out / "sources.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if done.get("config") == config:
            return done["counts"]
        raise FileExistsError(f"{out} holds a wallpaper set built with {done.get('config')}, not {config}; "
                              f"remove it or pass another --output")
    if (out / "images").exists():
        raise FileExistsError(f"{out / 'images'} exists without sources.json (an interrupted build?); "
                              f"remove it and run again")
    walls, left_out = find_wallpapers(roots)
    cells = [cell_grid(*_working_size(w)) for w in walls]
    train_cells = sum(len(c) - 2 for c in cells)
    per_train = max(1, -(-config["train"] // train_cells))
    per_eval = max(1, -(-config["test"] // len(walls)))
    jobs = [(w, str(out), seed, per_train, per_eval) for w in walls]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = [r for part in pool.map(cut_wallpaper, jobs) for r in part]
    else:
        rows = [r for job in jobs for r in cut_wallpaper(job)]
    with open(out / "crops.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    summary.write_text(json.dumps({"config": config, "counts": counts, "crops_per_cell":
                                   {"train": per_train, "val": per_eval, "test": per_eval},
                                   "wallpapers": [asdict(w) for w in walls], "left_out": left_out}, indent=1))
    return counts


def _working_size(wall: Wallpaper) -> tuple[int, int]:
    """The size ``load_source`` shrinks a wallpaper to (what its cells are cut from)."""
    short = min(wall.width, wall.height)
    if short <= 2 * MAX_CELL:
        return wall.width, wall.height
    factor = short / (2 * MAX_CELL)
    return round(wall.width / factor), round(wall.height / factor)
