"""Benchmark: image level codecs at 224 px: bytes per sample, encode and decode samples/s per core, PSNR.

    .venv/bin/icpc datasets wallpapers --output data/photos224
    nice -n 5 .venv/bin/python bench/codecs.py --data data/photos224 --samples 300 --repeats 5

For every ladder side (224/192/160/128/96, RGB) the crops are decoded from their q90 JPEG and
resized as the image modality does (Pillow bicubic): that uint8 picture is what a level stores.
Each candidate encodes it (JPEG q75/85/90/95 with Pillow's libjpeg-turbo, 4:2:0; JPEG q90 4:4:4;
JPEG q90 with simplejpeg's encoder; WebP q80/q90; PNG; raw; raw + zstd levels 1/3/9) and every
decoder that reads it decodes it back to a uint8 array (Pillow, simplejpeg, torchvision.io
``decode_jpeg``; ``zstandard``; ``np.frombuffer``). Reported per side and candidate: mean bytes,
encode and decode samples per CPU-second of this one-threaded process (per core; CPU time, so
other jobs on the shared machine slow it less than wall time would), PSNR against the stored
picture (dB, from the mean squared error over all samples; "lossless" when exact). Decoders
alternate within each repeat, the order reversed every other repeat; medians over repeats.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

SIDES = (224, 192, 160, 128, 96)


# ----------------------------------------------------------------------------- codecs


def _pil_encode(fmt: str, **kw) -> Callable[[np.ndarray], bytes]:
    from PIL import Image

    def encode(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt, **kw)
        return buf.getvalue()
    return encode


def _simplejpeg_encode(quality: int) -> Callable[[np.ndarray], bytes]:
    import simplejpeg

    return lambda pixels: simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")


def _zstd_encode(level: int) -> Callable[[np.ndarray], bytes]:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level)
    return lambda pixels: compressor.compress(pixels.tobytes())


def _pil_decode(data: bytes, shape: tuple) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _simplejpeg_decode(data: bytes, shape: tuple) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def _torchvision_decode(data: bytes, shape: tuple) -> np.ndarray:
    import torch
    from torchvision.io import decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy()


def _zstd_decode(data: bytes, shape: tuple) -> np.ndarray:
    import zstandard

    return np.frombuffer(zstandard.ZstdDecompressor().decompress(data), np.uint8).reshape(shape)


def _raw_decode(data: bytes, shape: tuple) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(shape)


def available_decoders() -> dict[str, Callable]:
    """JPEG decoders importable here (Pillow always; simplejpeg and torchvision when installed)."""
    found = {"pillow": _pil_decode}
    for name, module, fn in (("simplejpeg", "simplejpeg", _simplejpeg_decode),
                             ("torchvision", "torchvision.io", _torchvision_decode)):
        try:
            __import__(module)
            found[name] = fn
        except ImportError:
            print(f"note: {module} is not installed; its decoder is not measured", file=sys.stderr)
    return found


def candidates(jpeg_decoders: dict[str, Callable]) -> dict[str, tuple[Callable, dict[str, Callable]]]:
    """name -> (encoder, {decoder name: decoder})."""
    out: dict[str, tuple[Callable, dict[str, Callable]]] = {}
    for q in (75, 85, 90, 95):
        out[f"jpeg-q{q}"] = (_pil_encode("JPEG", quality=q, subsampling="4:2:0"), jpeg_decoders)
    out["jpeg-q90-444"] = (_pil_encode("JPEG", quality=90, subsampling="4:4:4"), jpeg_decoders)
    if "simplejpeg" in jpeg_decoders:
        out["jpeg-q90-simplejpeg-enc"] = (_simplejpeg_encode(90), {"simplejpeg": _simplejpeg_decode})
    for q in (80, 90):
        out[f"webp-q{q}"] = (_pil_encode("WEBP", quality=q, method=4), {"pillow": _pil_decode})
    out["png"] = (_pil_encode("PNG"), {"pillow": _pil_decode})
    out["raw"] = (lambda pixels: pixels.tobytes(), {"numpy": _raw_decode})
    for level in (1, 3, 9):   # 19 packs ~8% tighter than 9 but encodes ~25x slower (14 samples/s at 128 px)
        out[f"raw+zstd-{level}"] = (_zstd_encode(level), {"zstandard": _zstd_decode})
    return out


# ----------------------------------------------------------------------------- measuring


def load_levels(data: Path, samples: int) -> tuple[dict[int, list[np.ndarray]], float]:
    """The stored picture of every side for ``samples`` train crops (evenly spaced), and their mean JPEG bytes."""
    from PIL import Image

    files = sorted((data / "images" / "train").rglob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no crops under {data}/images/train; build them with "
                                f"'icpc datasets wallpapers --output {data}'")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(samples, len(files))).astype(int)]
    levels: dict[int, list[np.ndarray]] = {s: [] for s in SIDES}
    for path in picked:
        with Image.open(path) as im:
            square = im.convert("RGB")
        for side in SIDES:
            levels[side].append(np.asarray(square.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=None)))
    return levels, float(np.mean([p.stat().st_size for p in picked]))


def rate(fn: Callable, items: list, *args) -> float:
    """Items per CPU-second of this process (one thread)."""
    t0 = time.process_time()
    for item in items:
        fn(item, *args)
    return len(items) / max(time.process_time() - t0, 1e-9)


def measure(levels: dict[int, list[np.ndarray]], cands: dict, repeats: int) -> list[dict]:
    rows = []
    for side, pictures in levels.items():
        shape = pictures[0].shape
        for name, (encode, decoders) in cands.items():
            encode(pictures[0])   # warm-up: imports, encoder tables
            t0 = time.process_time()
            payloads = [encode(p) for p in pictures]
            encode_rate = len(pictures) / max(time.process_time() - t0, 1e-9)
            dec_rates: dict[str, list[float]] = {d: [] for d in decoders}
            for r in range(repeats):
                for d in (list(decoders) if r % 2 == 0 else list(decoders)[::-1]):
                    dec_rates[d].append(rate(decoders[d], payloads, shape))
            first = next(iter(decoders.values()))
            mse = np.mean([np.mean((first(b, shape).reshape(shape).astype(np.float64) - p) ** 2)
                           for b, p in zip(payloads, pictures)])
            rows.append({"side": side, "codec": name, "bytes": float(np.mean([len(b) for b in payloads])),
                         "psnr_db": None if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse)),
                         "encode_per_s": encode_rate,
                         "decode_per_s": {d: statistics.median(v) for d, v in dec_rates.items()}})
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    quality = "lossless" if row["psnr_db"] is None else f"{row['psnr_db']:.1f} dB"
    decode = ", ".join(f"{d} {v:,.0f}/s" for d, v in row["decode_per_s"].items())
    return (f"side {row['side']:3d} {row['codec']:24s} {row['bytes']:9,.0f} B  PSNR {quality:>9s}  "
            f"encode {row['encode_per_s']:8,.0f}/s  decode {decode}")


def markdown(result: dict) -> str:
    """The results as a BENCHMARKS.md table: one row per side and codec."""
    decoders = sorted({d for r in result["rows"] for d in r["decode_per_s"] if d not in ("numpy", "zstandard")})
    lines = ["| side | codec | bytes | x source | PSNR dB | encode/s | " + " | ".join(f"{d}/s" for d in decoders)
             + " | zstd or numpy/s |", "|" + "---|" * (7 + len(decoders))]
    for r in result["rows"]:
        dec = r["decode_per_s"]
        cells = [f"{dec[d]:,.0f}" if d in dec else "" for d in decoders]
        other = next((f"{dec[d]:,.0f}" for d in ("zstandard", "numpy") if d in dec), "")
        quality = "exact" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        lines.append(f"| {r['side']} | {r['codec']} | {r['bytes']:,.0f} | {r['bytes'] / result['source_jpeg_bytes']:.2f} "
                     f"| {quality} | {r['encode_per_s']:,.0f} | " + " | ".join(cells) + f" | {other} |")
    return "\n".join(lines)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of 'icpc datasets wallpapers'")
    p.add_argument("--samples", type=int, default=300, help="train crops measured (evenly spaced)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per codec (medians reported)")
    p.add_argument("--output", default="bench/results/codecs.json", help="where the JSON results go")
    p.add_argument("--table", action="store_true", help="print the table of --output's results and exit")
    args = p.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.output).read_text())))
        return
    torch.set_num_threads(1)   # per core: one decode thread
    levels, source_bytes = load_levels(Path(args.data), args.samples)
    rows = measure(levels, candidates(available_decoders()), args.repeats)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "command": " ".join(sys.argv),
        "samples": len(levels[SIDES[0]]), "repeats": args.repeats, "source_jpeg_bytes": source_bytes,
        "rows": rows}, indent=1))
    print(f"source crops (JPEG q90, 224 px): {source_bytes:,.0f} B mean; results in {args.output}")
    print(markdown(json.loads(Path(args.output).read_text())))


if __name__ == "__main__":
    main()
