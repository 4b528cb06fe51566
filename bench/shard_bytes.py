"""Benchmark: shard bytes per sample against the source files, and read amplification of a training epoch.

    .venv/bin/python bench/shard_bytes.py --data runs/demo-data --epochs 1

Sizes come from Python's tarfile (not the project's reader): bytes per sample = shard bytes /
samples, split into level payloads (members ``KEY.lK.*``), label and JSON members, and tar headers
and padding; and its ratio to the mean source file. Then one training epoch's batches (the
trainer's plan for 2 ranks, batch 64) are read by the project's loader (``BatchDataset`` in this
process, every rank's batches), which counts the bytes it fetched; read amplification = bytes
fetched / bytes of the payloads of the levels drawn, the latter taken from tarfile's member sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icpc.config import TrainConfig  # noqa: E402
from icpc.dataset import open_dataset  # noqa: E402
from icpc.training.data import BatchDataset, BatchRequest  # noqa: E402
from icpc.training.train import epoch_plan  # noqa: E402


def tar_sizes(path: Path) -> tuple[int, dict[str, int]]:
    """(file bytes, member -> size) with tarfile only."""
    with tarfile.open(path) as tf:
        members = {m.name: m.size for m in tf.getmembers()}
    return path.stat().st_size, members


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    root = Path(args.data)
    manifest = json.loads((root / "manifest.json").read_text())
    data = open_dataset(args.data)
    levels = len(data.spec.ladder)

    fields = [lv["field"] for lv in manifest["layout"]["levels"]]
    total, samples, per_level = 0, 0, np.zeros(levels)
    headers, label_meta = 0, 0
    payload = {}  # (shard name, key) -> [bytes per level], from tarfile
    for shard in manifest["shards"]:
        size, members = tar_sizes(root / shard["name"])
        keys = list(dict.fromkeys(name.split(".", 1)[0] for name in members))
        total += size
        samples += len(keys)
        for key in keys:
            payload[(shard["name"], key)] = [members[f"{key}.{f}"] for f in fields]
            per_level += payload[(shard["name"], key)]
            label_meta += members[f"{key}.cls"] + members[f"{key}.json"]
        headers += size - sum(members.values())
    rows = data.read_index(["shard", "key", "source", "split"]).to_pylist()
    source = np.mean([os.path.getsize(r["source"]) for r in rows])
    print(f"{samples} samples in {len(manifest['shards'])} shards: {total / samples:,.0f} bytes per sample "
          f"(payloads {per_level.sum() / samples:,.0f}, per level {np.round(per_level / samples).astype(int).tolist()} "
          f"as {fields}; cls + json {label_meta / samples:,.0f}; tar headers and padding {headers / samples:,.0f}); "
          f"mean source file {source:,.0f} bytes: {total / samples / source:.2f}x")

    table = data.table("train")
    train_rows = [r for r in rows if r["split"] == "train"]
    ds = BatchDataset(table, data.spec, data.shared_positions, "consistent")
    cfg = TrainConfig(data=args.data, batch_size=args.batch_size)
    used = 0
    for epoch in range(args.epochs):
        plan = epoch_plan(cfg, table, data.spec, epoch, args.world)
        for s in range(plan.steps):
            level = int(plan.levels[s])
            for rank in range(args.world):
                rws, w = plan.rank_rows(s, rank)
                ds[BatchRequest(s, level, rws, w, len(plan.rows[s]))]
                used += sum(payload[(train_rows[r]["shard"], train_rows[r]["key"])][level] for r in rws)
    fetched = ds.reader.io.bytes_read
    print(f"training epoch(s): fetched {fetched:,} bytes for {used:,} bytes of drawn-level payloads "
          f"(tarfile): read amplification {fetched / used:.3f}; {ds.reader.io.requests:,} range reads")


if __name__ == "__main__":
    main()
