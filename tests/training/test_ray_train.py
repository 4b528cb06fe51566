"""The training function launched by Ray Train (two workers on the local Ray) instead of torchrun."""

from __future__ import annotations

import csv
import json

from icpc.config import TrainConfig, finalize


def test_ray_train_runs_the_same_training_with_two_ranks(compressed, ray_local, tmp_path):
    from icpc.training.ray_train import run_ray_train

    cfg = finalize(TrainConfig(data=str(compressed), output=str(tmp_path), epochs=1, batch_size=16),
                   ["model.dim=32", "model.depth=1", "max_steps_per_epoch=4", "threads=1"])
    run_ray_train(cfg, num_workers=2, cpus_per_worker=0.5, progress=False)
    ranks = [json.loads((tmp_path / "ranks" / f"rank-{r}.jsonl").read_text()) for r in (0, 1)]
    assert ranks[0]["steps_run"] == ranks[1]["steps_run"] == 4
    with open(tmp_path / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert int(row["samples"]) == 2 * 4 * 16  # both ranks' samples summed by all_reduce
    assert (tmp_path / "last.pt").exists()
