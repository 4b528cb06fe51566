"""Benchmark: samples/s of the dataset reader alone (range read, CRC check, decode), one process, one core.

    .venv/bin/python bench/read_rate.py --data runs/demo-data --rounds 3
    # a layout change, before/after: run the same script with each checkout's python on its own data
    ../main/.venv/bin/python bench/read_rate.py --data runs/s2 && .venv/bin/python bench/read_rate.py --data runs/s3

Reads every training sample once at its epoch-0 level (uniform draw, seed 0) through
``icpc.dataset.SampleReader`` in batches of 64, as a DataLoader worker does; no model, no collate.
Uses only the reader's public API, so one script measures any schema. Prints the median rate over
rounds and the read amplification (bytes fetched / payload bytes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from icpc.contract import draw_levels
from icpc.dataset import SampleReader, open_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = open_dataset(args.data)
    table = data.table("train")
    levels = draw_levels(0, 0, table.key_hash, [1] * len(data.spec.ladder))
    rates = []
    for _ in range(args.rounds):
        reader = SampleReader(table, data.spec, data.shared_positions)
        t0 = time.perf_counter()
        for start in range(0, len(table), args.batch):
            rows = np.arange(start, min(len(table), start + args.batch))
            got = reader.read(rows, levels[rows])
            assert all(g is not None for g in got), reader.skipped
        rates.append(len(table) / (time.perf_counter() - t0))
    print(f"{args.data}: {statistics.median(rates):,.0f} samples/s (median of {args.rounds}: "
          f"{', '.join(f'{r:,.0f}' for r in rates)}); read amplification "
          f"{reader.io.bytes_read / reader.payload_bytes:.3f}")


if __name__ == "__main__":
    main()
