"""``icpc train --ray-workers N``: the same training function, launched by Ray Train instead of torchrun.

    icpc train --ray-workers 2 --data runs/data --output runs/icpc              # embedded Ray
    icpc train --ray-workers 8 --address auto --data /mnt/shared/data ...      # a Ray cluster

Ray Train starts one worker per rank, joins them in a process group (gloo, or nccl with GPUs)
and sets RANK / WORLD_SIZE / LOCAL_RANK like torchrun does, so ``training.train.train`` runs
unchanged: only the launch differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icpc.config import TrainConfig, from_dict, to_dict


def _train_loop(config: dict[str, Any]) -> None:
    from icpc.training.distributed import detect_world
    from icpc.training.train import train

    train(from_dict(TrainConfig, config["cfg"]), detect_world(), progress=config["progress"])


def run_ray_train(cfg: TrainConfig, num_workers: int, address: str | None = None, use_gpu: bool = False,
                  cpus_per_worker: float = 1.0, progress: bool = True) -> None:
    """Train with ``num_workers`` Ray Train workers; outputs land in ``cfg.output`` as with torchrun."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from icpc.pipeline.job import init_ray

    init_ray(address)
    output = Path(cfg.output).resolve()
    cfg.data, cfg.output = str(Path(cfg.data).resolve()), str(output)  # workers may start elsewhere
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"cfg": to_dict(cfg), "progress": progress},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="icpc-train", storage_path=str(output / "ray")),
    )
    trainer.fit()
