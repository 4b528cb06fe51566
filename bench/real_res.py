"""Benchmark: ICPC at real resolution (224 px photos, ladder 224/192/160/128/96, patch 16, RGB) against
the on-the-fly peer: shard bytes / source JPEG bytes, loader samples/s per core, read amplification,
compress samples/s per core. Goals (issue 25): <= 3.0x, >= 2.0x, <= 1.05.

    .venv/bin/icpc datasets wallpapers --output data/photos224
    nice -n 5 .venv/bin/python bench/real_res.py --photos data/photos224 --work runs/real_res --limit 1000

1. Compress: ``icpc compress`` of ``PHOTOS/images`` (``--limit`` crops per split) on an embedded Ray
   with one CPU (``num_cpus=1``): samples / the job's own seconds (its summary line; Ray's start
   excluded) is the per-core rate in wall time; and the same work in this process (decode, five
   levels, each encoded with the manifest's codec) per CPU-second, which the shared machine's load
   distorts less.
2. Footprint: the shards' bytes (every tar of the manifest, by ``os.stat``) / the bytes of the
   source JPEGs of the same samples (the index's ``source`` column).
3. Loader: one epoch's plan (``epoch_plan``, batch 64, one rank) read by the trainer's own
   ``BatchDataset`` in this process; the peer streams the same train JPEGs from webdataset tars
   (``webdataset.WebDataset``, written here with its ``ShardWriter``), decodes each (Pillow, and
   simplejpeg when installed), resizes it to the level the plan drew for it (Pillow bicubic, as the
   compressor does), patchifies, and batches 64 samples of one level, as a loader without ICPC's
   shards must. Both: samples per CPU-second of this one-threaded process (per core; CPU time, so
   the shared machine's other jobs count less than in wall time). Arms alternate within each
   repeat (order reversed every other repeat); medians and the ratio of medians.
4. Read amplification: bytes the loader fetched (its storage layer's counter) / payload bytes of the
   levels the plan drew (``size`` of index.parquet, read with pyarrow by the dataset module).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from icpc.config import TrainConfig  # noqa: E402
from icpc.contract import consistent_positions  # noqa: E402
from icpc.dataset import open_dataset  # noqa: E402
from icpc.pipeline.modalities.image import patchify  # noqa: E402
from icpc.training.data import BatchDataset, BatchRequest  # noqa: E402
from icpc.training.train import epoch_plan  # noqa: E402

SIDES = "224,192,160,128,96"
GOALS = {"footprint": 3.0, "loader": 2.0, "read_amplification": 1.05}


def compress(photos: Path, out: Path, limit: int, extra: list[str]) -> dict:
    """Run ``icpc compress`` on one Ray CPU; samples, wall seconds and the job's own summary."""
    cmd = [sys.executable, "-m", "icpc.cli", "compress", "--modality", "image", "--input", str(photos / "images"),
           "--output", str(out), "--limit", str(limit), "--set", f"image.sides={SIDES}", "--set", "image.patch=16",
           "--set", "image.channels=3", "--set", "num_cpus=1", *[a for s in extra for a in ("--set", s)]]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled",
                                                                     "RAY_USAGE_STATS_ENABLED": "0"})
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"icpc compress failed ({done.returncode}):\n{done.stderr[-3000:]}")
    samples = open_dataset(str(out)).read_index(["key"]).num_rows
    job = re.search(r"in ([\d.]+) s \(", done.stdout)   # the job's own time, Ray's start excluded
    job_seconds = float(job.group(1)) if job else seconds
    return {"samples": samples, "seconds": seconds, "job_seconds": job_seconds,
            "per_core_per_s": samples / job_seconds, "command": " ".join(cmd[1:]), "summary": done.stdout[-1500:]}


def compress_cpu_rate(data, root: Path, sources: list[str]) -> float:
    """Samples per CPU-second of one thread: decode, every level resized and patchified, every level
    encoded as the manifest says (schema 3's ``icpc.codecs.encode_level``; raw bytes before it)."""
    from icpc.pipeline.modalities import registry

    modality = registry()["image"]
    layout = (json.loads((root / "manifest.json").read_text()).get("layout") or {}).get("levels")
    try:
        from icpc.codecs import encode_level
    except ImportError:   # schema 2: the payload is the token array's bytes
        encode_level = None
    t0 = time.process_time()
    for source in sources:
        out = modality.compress_bytes(Path(source).read_bytes(), data.spec)
        for i, (tokens, positions) in enumerate(out.levels):
            if encode_level and isinstance(layout, list):
                encode_level(tokens, positions, data.spec, i, layout[i])
            else:
                tokens.tobytes()
    return len(sources) / (time.process_time() - t0)


def footprint(data, root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    shard_bytes = sum(os.stat(root / s["name"]).st_size for s in manifest["shards"])
    sources = data.read_index(["source"]).column("source").to_pylist()
    source_bytes = sum(os.stat(s).st_size for s in sources)
    return {"samples": len(sources), "shard_bytes": shard_bytes, "source_bytes": source_bytes,
            "ratio": shard_bytes / source_bytes, "shards": len(manifest["shards"]),
            "schema": manifest.get("schema") or manifest.get("schema_version")}


def plan_levels(plan, n: int) -> np.ndarray:
    levels = np.full(n, -1, dtype=np.int64)
    for s in range(plan.steps):
        levels[plan.rows[s]] = plan.levels[s]
    return levels


def icpc_epoch(data, table, plan) -> tuple[int, float, int, int]:
    """(samples, CPU seconds, bytes fetched, payload bytes) of one epoch through BatchDataset."""
    ds = BatchDataset(table, data.spec, data.shared_positions, "consistent")
    n, fetched, payload = 0, 0, 0
    t0 = time.process_time()
    for s in range(plan.steps):
        rows, weights = plan.rank_rows(s, 0)
        batch = ds[BatchRequest(s, int(plan.levels[s]), rows, weights, len(plan.rows[s]))]
        n += len(batch["labels"])
    seconds = time.process_time() - t0
    fetched = ds.reader.io.bytes_read
    payload = int(sum(table.size[plan.rows[s], int(plan.levels[s])].sum() for s in range(plan.steps)))
    return n, seconds, fetched, payload


def write_peer_shards(keys: list[str], sources: list[str], labels: list[int], folder: Path) -> list[str]:
    """The train JPEGs as plain webdataset shards (jpg + cls), 1,000 samples each."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "peer-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for key, source, label in zip(keys, sources, labels):
            sink.write({"__key__": key, "jpg": Path(source).read_bytes(), "cls": int(label)})
    return sorted(str(p) for p in folder.glob("peer-*.tar"))


def peer_epoch(urls: list[str], level_of: dict[str, int], sides: list[int], patch: int, batch: int,
               decoder: str) -> tuple[int, float]:
    """(samples, CPU seconds): stream, decode, resize to the drawn level, patchify, batch by level."""
    import webdataset as wds
    from PIL import Image

    if decoder == "simplejpeg":
        import simplejpeg

        def decode(data: bytes):
            return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB"))
    else:
        def decode(data: bytes):
            return Image.open(io.BytesIO(data)).convert("RGB")

    ref = (sides[0] // patch,) * 2
    positions = {i: torch.from_numpy(consistent_positions(ref, (s // patch,) * 2).astype(np.int64))
                 for i, s in enumerate(sides)}
    buckets: dict[int, list] = {i: [] for i in range(len(sides))}
    n = 0
    t0 = time.process_time()
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        level = level_of[sample["__key__"]]
        side = sides[level]
        img = decode(sample["jpg"]).resize((side, side), Image.Resampling.BICUBIC, reducing_gap=None)
        tokens = patchify(np.asarray(img, dtype=np.uint8), patch)
        buckets[level].append((torch.from_numpy(tokens), int(sample["cls"])))
        if len(buckets[level]) == batch:
            toks, labels = zip(*buckets[level])
            _ = (torch.stack(toks), positions[level].expand(batch, -1), torch.tensor(labels))
            n += batch
            buckets[level] = []
    for level, rest in buckets.items():
        if rest:
            toks, labels = zip(*rest)
            _ = (torch.stack(toks), positions[level].expand(len(rest), -1), torch.tensor(labels))
            n += len(rest)
    return n, time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", required=True, help="output folder of 'icpc datasets wallpapers'")
    p.add_argument("--work", required=True, help="folder for the compressed dataset and the peer's shards")
    p.add_argument("--limit", type=int, default=1000, help="crops per split compressed (--limit of icpc compress)")
    p.add_argument("--repeats", type=int, default=5, help="loader epochs per arm (medians reported)")
    p.add_argument("--set", action="append", default=[], help="extra icpc compress --set overrides (e.g. a codec)")
    p.add_argument("--label", default="", help="name of this row in the results (e.g. 'schema 2')")
    p.add_argument("--output", default="bench/results/real_res.json", help="JSON results, appended to")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    data_dir = work / "data"
    saved = work / "compress.json"
    if saved.exists():   # a re-run on the same --work: the loader arms again, the compress as measured then
        comp = json.loads(saved.read_text())
    elif data_dir.exists():
        raise FileExistsError(f"{data_dir} exists without {saved.name}; pass a fresh --work")
    else:
        comp = compress(Path(args.photos), data_dir, args.limit, args.set)
        saved.write_text(json.dumps(comp))
    print(f"compress: {comp['samples']} samples in {comp['job_seconds']:.1f} s on 1 CPU ({comp['seconds']:.1f} s with "
          f"Ray's start): {comp['per_core_per_s']:.1f}/s per core")
    data = open_dataset(str(data_dir))
    foot = footprint(data, data_dir)
    print(f"footprint: {foot['shard_bytes']:,} B of shards / {foot['source_bytes']:,} B of source JPEGs "
          f"({foot['samples']} samples) = {foot['ratio']:.2f}x")

    comp["cpu_per_s"] = compress_cpu_rate(data, data_dir, data.read_index(["source"]).column("source").to_pylist()[:300])
    print(f"compress in one thread (decode, 5 levels, encode; CPU time, 300 samples): {comp['cpu_per_s']:.0f}/s per core")

    table = data.table("train")
    rows = data.read_index(["key", "source", "label", "split"]).to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    plan = epoch_plan(TrainConfig(data=str(data_dir), batch_size=64), table, data.spec, 0, 1)
    levels = plan_levels(plan, len(table))
    level_of = {r["key"]: int(lv) for r, lv in zip(train, levels)}
    urls = write_peer_shards([r["key"] for r in train], [r["source"] for r in train], [r["label"] for r in train],
                             work / "peer")
    sides = [lv.params["side"] for lv in data.spec.ladder]
    patch = data.spec.tokenization["patch"]
    peers = ["pillow"] + (["simplejpeg"] if _has("simplejpeg") else [])
    arms = ["icpc"] + [f"peer-{d}" for d in peers]
    rates: dict[str, list[float]] = {a: [] for a in arms}
    amp = []
    for r in range(args.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            if arm == "icpc":
                n, sec, fetched, payload = icpc_epoch(data, table, plan)
                amp.append(fetched / payload)
            else:
                n, sec = peer_epoch(urls, level_of, sides, patch, 64, arm.split("-", 1)[1])
            assert n == len(table), (arm, n, len(table))
            rates[arm].append(n / sec)
        print(f"repeat {r + 1}: " + ", ".join(f"{a} {v[-1]:,.0f}/s" for a, v in rates.items()), flush=True)
    med = {a: statistics.median(v) for a, v in rates.items()}
    best_peer = max((a for a in arms if a != "icpc"), key=lambda a: med[a])
    result = {
        "label": args.label, "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "command": " ".join(sys.argv), "compress": comp, "footprint": foot,
        "loader_per_core_per_s": med, "loader_runs": rates, "loader_ratio_vs_best_peer": med["icpc"] / med[best_peer],
        "best_peer": best_peer, "read_amplification": statistics.median(amp), "train_samples": len(table),
        "level_counts": np.bincount(levels, minlength=len(sides)).tolist()}
    print(f"loader per core: " + ", ".join(f"{a} {v:,.0f}/s" for a, v in med.items()) +
          f"; ICPC / {best_peer} = {result['loader_ratio_vs_best_peer']:.2f}x (goal >= {GOALS['loader']})")
    print(f"read amplification {result['read_amplification']:.3f} (goal <= {GOALS['read_amplification']}); "
          f"footprint {foot['ratio']:.2f}x (goal <= {GOALS['footprint']}); compress {comp['per_core_per_s']:.1f}/s per "
          f"core in the Ray job (wall), {comp['cpu_per_s']:.0f}/s per CPU-second in one thread")
    out = Path(args.output)
    previous = json.loads(out.read_text()) if out.exists() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(previous + [result], indent=1))


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
