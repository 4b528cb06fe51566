"""What a training run reports: ``metrics.csv`` and TensorBoard (rank 0), and each rank's own trace."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from icpc import storage

METRICS = "metrics.csv"


class RunLog:
    """Epoch rows to ``metrics.csv`` and TensorBoard scalars (rank 0 only), rank records to ``ranks/rank-R.jsonl``.

    TensorBoard needs a local folder; with an object-store output it is skipped (and said so).
    """

    def __init__(self, out: str, rank: int, is_main: bool):
        self.out, self.rank, self.is_main = out, rank, is_main
        self.writer = None
        if is_main and storage.is_local(out):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(storage.local_path(storage.join(out, "tb")))

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer:
            self.writer.add_scalar(name, value, step)

    def epoch(self, row: dict[str, Any], scalars: tuple[str, ...]) -> None:
        """Append ``row`` to metrics.csv and its ``scalars`` to TensorBoard (call on rank 0)."""
        append_csv(storage.join(self.out, METRICS), row)
        for k in scalars:
            self.scalar(f"epoch/{k}", row[k], row["epoch"])

    def rank_record(self, record: dict[str, Any]) -> None:
        """Each rank appends what it actually ran to ranks/rank-R.jsonl (checks equal step counts)."""
        append_text(storage.join(self.out, "ranks", f"rank-{self.rank}.jsonl"), json.dumps(record) + "\n")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def append_text(location: str, text: str) -> None:
    """Append to a small text file (read, extend, rewrite atomically on an object store)."""
    if storage.is_local(location):
        storage.makedirs(storage.parent(location))
        with open(storage.local_path(location), "a") as f:
            f.write(text)
        return
    old = storage.read_text(location) if storage.exists(location) else ""
    storage.write_text(location, old + text)


def append_csv(location: str, row: dict[str, Any]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(row))
    if not storage.exists(location):
        w.writeheader()
    w.writerow(row)
    append_text(location, buf.getvalue())


def read_csv(location: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(storage.read_text(location))))
