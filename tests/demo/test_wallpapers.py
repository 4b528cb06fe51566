"""The wallpaper photo set builder on real wallpapers from Debian's ukui-wallpapers (a handful, shrunk)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icpc.demo.wallpapers import (CROP, SCALES, build_wallpapers, cell_grid, cell_splits, crop_boxes,
                                  find_wallpapers, group_name)
from icpc.pipeline.scan import scan_class_folders

UKUI = Path("/usr/share/backgrounds")   # ukui-wallpapers (21 MB, in .ci/run's apt line)


def _real(name: str) -> Image.Image:
    path = UKUI / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: apt-get install -y ukui-wallpapers (see .ci/run)")
    with Image.open(path) as im:
        im.draft("RGB", (im.width // 4, im.height // 4))
        return im.convert("RGB")


@pytest.fixture(scope="module")
def wallpaper_root(tmp_path_factory) -> Path:
    """Five real pictures laid out as the packages ship them: a Plasma-style package with a link
    and a smaller size, a byte-identical copy, a picture at two sizes, two tints of one design, a
    thumbnail and a picture too small to cut."""
    root = tmp_path_factory.mktemp("walls")
    pkg = root / "Kite" / "contents" / "images"
    pkg.mkdir(parents=True)
    string = _real("string.jpg")
    string.resize((1200, 750)).save(pkg / "1200x750.jpg", quality=92)
    string.resize((768, 480)).save(pkg / "768x480.jpg", quality=92)
    os.symlink("1200x750.jpg", pkg / "1024x640.jpg")                    # Plasma links screen sizes
    string.resize((400, 250)).save(root / "Kite" / "contents" / "screenshot.jpg")
    _real("calla.png").resize((1110, 720)).save(root / "calla.png")
    shutil.copyfile(root / "calla.png", root / "calla-copy.png")         # same bytes, another name
    goldfish = _real("goldfish.png")
    goldfish.resize((1092, 720)).save(root / "goldfish_1092x720.png")
    goldfish.resize((910, 600)).save(root / "goldfish.png")              # one picture at two sizes
    mouse = np.asarray(_real("the-mouse.jpg").resize((960, 600)), dtype=np.float32)
    Image.fromarray(mouse.astype(np.uint8)).save(root / "mouse-warm.png")
    Image.fromarray((mouse * 0.8).astype(np.uint8)).save(root / "mouse-cold.png")   # a darker tint
    _real("firstgeneration.jpg").resize((960, 600)).save(root / "firstgeneration.jpg")  # same size, distinct
    _real("rhythm.jpg").resize((420, 260)).save(root / "rhythm.jpg")     # short side under 448 px
    return root


def test_group_name_follows_the_package_conventions():
    assert group_name("Altai/contents/images/5120x2880.png") == "Altai"
    assert group_name("Kay/contents/images_dark/1080x1920.png") == "Kay"
    assert group_name("mate/abstract/Elephants_3840x2160.jpg") == "mate-abstract-Elephants"
    assert group_name("gnome/wood-d.webp") == group_name("gnome/wood-l.webp") == "gnome-wood"
    assert group_name("mate/desktop/MATE-Stripes-Dark.png") == "mate-desktop-MATE-Stripes"
    assert group_name("fluent-color.png") == "fluent-color"


def test_cells_and_crops_stay_inside_their_cell_at_every_scale():
    cells = cell_grid(2560, 1600)
    assert len(cells) == 6 and all(side == 800 for _, _, side in cells)
    assert len(cell_grid(1000, 3000)) == 12 and len(cell_grid(1000, 1000)) == 4
    splits = cell_splits(6, np.random.default_rng(0))
    assert sorted(splits) == ["test", "train", "train", "train", "train", "val"]
    boxes = crop_boxes(cells[4], 8, np.random.default_rng(1))
    cx, cy, cs = cells[4]
    assert {side for *_, side in boxes} == {round(cs * s) for s in SCALES}
    assert all(cx <= x and x + s <= cx + cs and cy <= y and y + s <= cy + cs for x, y, s in boxes)
    small = crop_boxes((0, 0, 300), 4, np.random.default_rng(1))
    assert min(s for *_, s in small) == CROP          # never below 224 source pixels
    assert crop_boxes(cells[4], 8, np.random.default_rng(1)) == boxes


def test_discovery_dedups_bytes_names_and_tints(wallpaper_root):
    walls, left_out = find_wallpapers([str(wallpaper_root)])
    by_label = {w.label: w for w in walls}
    assert sorted(by_label) == ["Kite", "calla", "firstgeneration", "goldfish", "mouse-cold"]
    kite = by_label["Kite"]
    assert (kite.width, kite.height) == (1200, 750) and kite.source.endswith("1200x750.jpg")
    assert len(kite.files) == 3                                          # the link and the smaller size
    assert len(by_label["calla"].files) == 2                             # the byte-identical copy
    assert by_label["goldfish"].source.endswith("goldfish_1092x720.png")  # the largest size
    assert len(by_label["mouse-cold"].files) == 2                             # two tints of one design
    reasons = {Path(d["path"]).name: d["reason"] for d in left_out}
    assert "short side under 448" in reasons["rhythm.jpg"] and "thumbnail" in reasons["screenshot.jpg"]


def _crop_rows(folder: Path) -> list[dict]:
    with open(folder / "crops.csv") as f:
        return list(csv.DictReader(f))


def _overlap(a: dict, b: dict) -> bool:
    ax, ay, asz, bx, by, bsz = (int(a["x"]), int(a["y"]), int(a["side"]), int(b["x"]), int(b["y"]), int(b["side"]))
    return ax < bx + bsz and bx < ax + asz and ay < by + bsz and by < ay + asz


def test_build_writes_224_px_jpegs_with_no_pixel_in_two_splits(wallpaper_root, tmp_path):
    out = tmp_path / "photos"
    counts = build_wallpapers(out, train=60, test=10, seed=3, roots=[str(wallpaper_root)], workers=2)
    rows = _crop_rows(out)
    assert counts == {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts["train"] >= 60 and counts["test"] >= 10 and counts["val"] == counts["test"]
    # sample keys (split_label_file) fit a schema 3 member name: ustar's 100 bytes with ".l0.jpg"
    assert max(len(r["file"]) for r in rows) < 60
    for r in rows[::7]:
        with Image.open(out / r["file"]) as im:
            assert (im.format, im.size, im.mode) == ("JPEG", (CROP, CROP), "RGB")
    labels = {r["label"] for r in rows}
    for label in labels:   # every wallpaper in every split, from disjoint regions of its source
        mine = [r for r in rows if r["label"] == label]
        assert {r["split"] for r in mine} == {"train", "val", "test"}
        for a in mine:
            assert not any(_overlap(a, b) for b in mine if b["split"] != a["split"]), a
    summary = json.loads((out / "sources.json").read_text())
    assert {w["label"] for w in summary["wallpapers"]} == labels
    listing, rejects, classes = scan_class_folders(out / "images", {".jpg"}, 0, 0.1, 0.1)
    assert not rejects and sorted(classes) == sorted(labels) and listing.num_rows == len(rows)
    assert set(listing.column("split").to_pylist()) == {"train", "val", "test"}

    # Deterministic: one worker writes the same bytes; the same arguments keep the folder as it is
    again = tmp_path / "again"
    assert build_wallpapers(again, train=60, test=10, seed=3, roots=[str(wallpaper_root)], workers=1) == counts

    def digest(folder: Path) -> str:
        return hashlib.sha256(b"".join((folder / r["file"]).read_bytes() for r in rows)).hexdigest()

    assert digest(again) == digest(out)
    assert build_wallpapers(out, train=60, test=10, seed=3, roots=[str(wallpaper_root)]) == counts
    with pytest.raises(FileExistsError, match="remove it or pass another --output"):
        build_wallpapers(out, train=60, test=10, seed=4, roots=[str(wallpaper_root)])


def test_no_wallpapers_names_the_packages(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y plasma-workspace-wallpapers"):
        build_wallpapers(tmp_path / "out", roots=[str(tmp_path / "nothing")])
