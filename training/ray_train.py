"""``icpc train --ray-workers N``: the same training function, launched by Ray Train instead of torchrun.

    icpc train --ray-workers 2 --data runs/data --output runs/icpc              # embedded Ray
    icpc train --ray-workers 8 --address auto --data s3://bucket/data ...      # a Ray cluster

Ray Train starts one worker per rank, joins them in a process group (gloo, or nccl with GPUs)
and sets RANK / WORLD_SIZE / LOCAL_RANK like torchrun does, so ``training.train.train`` runs
unchanged: only the launch differs. Every checkpoint the run writes is also reported to Ray Train
(``ray.train.report``: a small directory naming the checkpoint file), so with
``FailureConfig(max_failures=N)`` a killed worker makes Ray Train restart the group, and the
restarted workers resume on their own, mid-epoch included, from ``OUTPUT/last.pt`` (the newest
complete checkpoint, which may be newer than the last report every worker completed).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from icpc import storage
from icpc.config import TrainConfig, from_dict, to_dict

POINTER = "icpc_checkpoint.json"


def _report(path: str, info: dict[str, Any]) -> None:
    """``ray.train.report`` from every rank; rank 0 attaches a checkpoint that names ``path``."""
    import ray.train

    if not path:
        ray.train.report(info)
        return
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, POINTER), "w") as f:
            json.dump({"checkpoint": path, **info}, f)
        ray.train.report(info, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _train_loop(config: dict[str, Any]) -> None:
    import ray.train

    from icpc.training.distributed import detect_world
    from icpc.training.train import Hooks, train

    cfg = from_dict(TrainConfig, config["cfg"])
    if ray.train.get_checkpoint() is not None:
        # Ray Train restarted the group after a failure: continue from OUTPUT/last.pt, the newest complete
        # checkpoint (it may be newer than the last one every worker managed to report before the failure)
        cfg.resume = True
    train(cfg, detect_world(), progress=config["progress"], hooks=Hooks(on_checkpoint=_report, lock_wait_s=60.0))


def run_ray_train(cfg: TrainConfig, num_workers: int, address: str | None = None, use_gpu: bool = False,
                  cpus_per_worker: float = 1.0, progress: bool = True, max_failures: int = 2) -> None:
    """Train with ``num_workers`` Ray Train workers; outputs land in ``cfg.output`` as with torchrun.

    ``max_failures``: how many times Ray Train restarts the workers after one dies (each restart
    resumes from the last checkpoint; set ``checkpoint_every`` to bound the work lost).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from icpc.pipeline.job import init_ray
    from icpc.pipeline.modalities import plugin_env

    init_ray(address)
    cfg.data, cfg.output = storage.absolute(cfg.data), storage.absolute(cfg.output)  # workers may start elsewhere
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"cfg": to_dict(cfg), "progress": progress},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="icpc-train", storage_path=storage.join(cfg.output, "ray"),
                             failure_config=FailureConfig(max_failures=max_failures),
                             worker_runtime_env={"env_vars": plugin_env()} if plugin_env() else None),
    )
    trainer.fit()
