"""Benchmark: JPEG levels with Huffman tables fitted to each picture (Pillow ``optimize=True``) against the
standard tables, on real 224 px photo crops resized to the ladder 224/192/160/128/96 (bicubic, as the
compressor does), q90 at 224 px and q85 below (the compress default): bytes per level, encode CPU, and a
check that both decode to the same pixels.

    .venv/bin/icpc datasets wallpapers --output data/photos224
    .venv/bin/python bench/jpeg_optimize.py --photos data/photos224 --limit 300 --output bench/results/jpeg_optimize.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

SIDES = (224, 192, 160, 128, 96)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", required=True, help="a folder from `icpc datasets wallpapers` (its images/ crops)")
    p.add_argument("--limit", type=int, default=300, help="crops (the first N train crops by path)")
    p.add_argument("--output", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    files = sorted(Path(args.photos, "images", "train").glob("*/*.jpg"))[: args.limit]
    if not files:
        p.error(f"no train crops under {args.photos}/images/train: build them with icpc datasets wallpapers")
    size = {(s, o): 0 for s in SIDES for o in (False, True)}
    cpu = {False: 0.0, True: 0.0}
    for f in files:
        image = Image.open(f).convert("RGB")
        for side in SIDES:
            picture = image if image.size == (side, side) else image.resize((side, side), Image.BICUBIC)
            quality = 90 if side == SIDES[0] else 85
            pixels = []
            for optimize in (False, True):
                buf = io.BytesIO()
                t0 = time.process_time()
                picture.save(buf, "JPEG", quality=quality, optimize=optimize)
                cpu[optimize] += time.process_time() - t0
                size[(side, optimize)] += buf.tell()
                pixels.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
            if not np.array_equal(*pixels):
                raise SystemExit(f"{f} at {side} px: optimize=True decoded to other pixels")
    rows = [{"side": s, "bytes_standard": size[(s, False)], "bytes_optimized": size[(s, True)],
             "ratio": size[(s, True)] / size[(s, False)]} for s in SIDES]
    total = (sum(size[(s, True)] for s in SIDES), sum(size[(s, False)] for s in SIDES))
    encodes = len(files) * len(SIDES)
    report = {"command": " ".join([sys.executable, *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
              "crops": len(files), "levels": rows, "ratio_all_levels": total[0] / total[1],
              "encode_ms": {"standard": 1000 * cpu[False] / encodes, "optimized": 1000 * cpu[True] / encodes},
              "same_pixels": True}
    for r in rows:
        print(f"{r['side']:>4} px: {r['bytes_standard']:>9,} -> {r['bytes_optimized']:>9,} B ({r['ratio']:.3f}x)")
    print(f"all levels {report['ratio_all_levels']:.3f}x; encode {report['encode_ms']['standard']:.3f} -> "
          f"{report['encode_ms']['optimized']:.3f} ms CPU; same pixels in all {encodes} encodes")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
