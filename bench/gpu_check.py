"""GPU check: ViT-B/16-sized ICPC training on real images, step time per level, ICPC/baseline epoch time, data wait.

    bash bench/gpu_check.sh                      # on a GPU machine (one call, under 9 minutes)
    .venv/bin/python bench/gpu_check.py --smoke  # the same path on a CPU, tiny, to check the script

1. Builds a dataset without Ray (the project's image compressor and shard writer, 16 processes):
   Fashion-MNIST images (the Debian package's IDX files, carried as ``.gpudata/``) upscaled to
   224 px RGB, ladder 224/192/160/128/96 px with 16 px patches (196/144/100/64/36 tokens).
2. Step time per level: forward + backward + AdamW step of a dim-768, depth-12, 12-head model
   (ViT-B/16 sized, 86 M parameters) in bf16 autocast at batch 128, after warm-up; then the same for
   timm's own ``vit_base_patch16_224`` through the model plugin (``--model timm:...``), when timm imports.
3. ``icpc train`` (torchrun, nccl when there is a GPU) for a fixed number of steps, ICPC then the
   baseline then ICPC again, DataLoader workers, pinned memory: epoch seconds, data wait.
Prints a fixed summary (lines starting with ``GPU_CHECK``) and writes it to ``$OUT/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_dataset(out: Path, n_train: int, sides: list[int], patch: int, idx_dir: str, workers: int) -> None:
    """Shards, index and manifest from upscaled Fashion-MNIST, written by the project's own writer."""
    from icpc import storage
    from icpc.contract import SPLITS
    from icpc.demo.fashion_mnist import FASHION_MNIST_CLASSES, read_idx
    from icpc.pipeline.modalities.image import ImageConfig, build_spec
    from icpc.pipeline.writer import index_schema, meta_types, write_manifest, write_parquet

    spec = build_spec(ImageConfig(sides=sides, patch=patch, channels=3))
    images = read_idx(f"{idx_dir}/train-images-idx3-ubyte.gz")
    labels = read_idx(f"{idx_dir}/train-labels-idx1-ubyte.gz")
    n_val = max(64, n_train // 20)
    plan, per_shard = [], 500
    for split, lo, hi in (("train", 0, n_train), ("val", n_train, n_train + n_val)):
        for k, start in enumerate(range(lo, hi, per_shard)):
            plan.append((f"{split}-{k:06d}.tar", split, list(range(start, min(hi, start + per_shard)))))
    storage.makedirs(str(out))
    with Pool(workers, initializer=_init, initargs=(images, labels, spec.to_json(), str(out))) as pool:
        shards = pool.map(_shard, plan)
    rows = [r for s in shards for r in s.rows]
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = index_schema(len(spec.ladder), meta_types(rows))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(out / "index.parquet"))
    write_parquet([], str(out / "rejects.parquet"))
    counts = {s: sum(sh.samples for sh in shards if sh.split == s) for s in SPLITS}
    write_manifest(str(out), spec, 0, {"input": idx_dir, "modality": "image"}, FASHION_MNIST_CLASSES, shards, counts)


_STATE: dict = {}


def _init(images, labels, spec_json, out) -> None:
    from icpc.contract import Spec

    _STATE.update(images=images, labels=labels, spec=Spec.from_json(spec_json), out=out)


def _shard(job):
    from PIL import Image

    from icpc.pipeline.modalities.image import compress
    from icpc.pipeline.writer import ShardBuilder

    name, split, idx = job
    spec = _STATE["spec"]
    side = int(spec.ladder[0].params["side"])
    builder = ShardBuilder(spec, shared_positions=True)
    for i in idx:
        square = Image.fromarray(_STATE["images"][i]).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        out = compress(square, spec)
        builder.add({"key": f"fmnist_{i:05d}", "source": f"train-images-idx3-ubyte.gz:{i}", "split": split,
                     "label": int(_STATE["labels"][i]), "label_name": str(int(_STATE["labels"][i]))},
                    out.levels, out.meta)
    return builder.write(str(Path(_STATE["out"]) / name), name, split)


def step_times(data_dir: Path, dim: int, depth: int, heads: int, batch: int, steps: int, model_ref: str = "transformer",
               model_args: dict | None = None) -> list[dict]:
    """Median ms of a training step per level (bf16 autocast on GPU), after warm-up; ``model_ref``: any plugin."""
    import torch

    from icpc.config import ModelConfig
    from icpc.dataset import open_dataset
    from icpc.modelio import build_model
    from icpc.training.data import BatchDataset, BatchRequest
    from icpc.training.model import param_groups

    data = open_dataset(str(data_dir))
    table = data.table("train")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ModelConfig(name=model_ref, args=dict(model_args or {}), dim=dim, depth=depth, heads=heads, mlp_ratio=4.0)
    model = build_model(data.spec, cfg, 10).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=device.type == "cuda")
    ds = BatchDataset(table, data.spec, data.shared_positions, "consistent")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    out = []
    for level, lv in enumerate(data.spec.ladder):
        b = ds[BatchRequest(0, level, np.arange(batch), np.ones(batch, np.float32), batch)]
        x, p, y = (b[k].to(device) for k in ("tokens", "positions", "labels"))
        times = []
        for i in range(steps + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x, p, level).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        out.append({"level": level, "tokens": lv.tokens, "batch": batch, "ms": 1000 * float(np.median(times)),
                    "samples_per_s": batch / float(np.median(times))})
    return out


def timm_step_times(data_dir: Path, sizes: dict) -> tuple[list[dict], float | None]:
    """The same step timing for timm's ViT (``timm:vit_base_patch16_224``; smoke: vit_tiny, depth 2) through the
    model plugin; skipped with a GPU_CHECK line when timm is not importable (the machine has no network: carry
    a wheel, see gpu_check.sh)."""
    try:
        import timm
    except ImportError as exc:
        print(f"GPU_CHECK timm skipped: {exc}", flush=True)
        return [], None
    ref, args = sizes["timm"]
    steps = step_times(data_dir, sizes["dim"], sizes["depth"], sizes["heads"], sizes["batch"], sizes["steps"],
                       ref, args)
    for s in steps:
        print(f"GPU_CHECK timm step model={ref} level={s['level']} tokens={s['tokens']} batch={s['batch']} "
              f"ms={s['ms']:.2f} samples_per_s={s['samples_per_s']:.0f}", flush=True)
    mix = float(np.mean([s["ms"] for s in steps]) / steps[0]["ms"])
    print(f"GPU_CHECK timm step_ratio_uniform_mix_vs_level0={mix:.3f} (timm {timm.__version__})", flush=True)
    return steps, mix


def train_arm(data_dir: Path, out: Path, baseline: bool, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "icpc.cli", "train", "--nproc-per-node", "1", "--data", str(data_dir),
           "--output", str(out), "--epochs", "1", *(["--baseline"] if baseline else []),
           *(x for s in sets for x in ("--set", s))]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    return {"epoch_seconds": float(row["epoch_seconds"]), "data_wait": float(row["data_wait"]),
            "steps": int(row["steps"]), "samples": int(row["samples"]), "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU check of the script itself")
    p.add_argument("--work", default="/tmp/icpc-gpu-check", help="scratch folder")
    p.add_argument("--idx", default=str(REPO / ".gpudata"), help="folder with Fashion-MNIST's IDX files")
    args = p.parse_args()
    work = Path(args.work)
    if args.smoke:
        sizes = dict(n_train=600, sides=[64, 48, 32], patch=16, dim=64, depth=2, heads=4, batch=16, steps=3,
                     train_steps=8, workers=2, timm=("timm:vit_tiny_patch16_224", {"depth": 2}))
    else:
        sizes = dict(n_train=20000, sides=[224, 192, 160, 128, 96], patch=16, dim=768, depth=12, heads=12,
                     batch=128, steps=10, train_steps=120, workers=min(16, os.cpu_count() or 1),
                     timm=("timm:vit_base_patch16_224", {}))
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"GPU_CHECK device={device!r} torch={torch.__version__} cpus={os.cpu_count()}", flush=True)
    t0 = time.perf_counter()
    build_dataset(work / "data", sizes["n_train"], sizes["sides"], sizes["patch"], args.idx, sizes["workers"])
    print(f"GPU_CHECK dataset samples={sizes['n_train']} seconds={time.perf_counter() - t0:.1f}", flush=True)
    steps = step_times(work / "data", sizes["dim"], sizes["depth"], sizes["heads"], sizes["batch"], sizes["steps"])
    for s in steps:
        print(f"GPU_CHECK step level={s['level']} tokens={s['tokens']} batch={s['batch']} ms={s['ms']:.2f} "
              f"samples_per_s={s['samples_per_s']:.0f}", flush=True)
    mix = float(np.mean([s["ms"] for s in steps]) / steps[0]["ms"])
    print(f"GPU_CHECK step_ratio_uniform_mix_vs_level0={mix:.3f}", flush=True)
    timm_steps, timm_mix = timm_step_times(work / "data", sizes)
    sets = [f"model.dim={sizes['dim']}", f"model.depth={sizes['depth']}", f"model.heads={sizes['heads']}",
            "model.mlp_ratio=4", f"batch_size={sizes['batch']}", f"max_steps_per_epoch={sizes['train_steps']}",
            "lr=1e-4", f"loader_workers={min(8, sizes['workers'])}", "prefetch=4"]
    arms = {}
    for name, baseline in (("icpc", False), ("baseline", True), ("icpc2", False)):
        arms[name] = train_arm(work / "data", work / name, baseline, sets)
        a = arms[name]
        print(f"GPU_CHECK train arm={name} epoch_seconds={a['epoch_seconds']:.2f} steps={a['steps']} "
              f"data_wait={100 * a['data_wait']:.1f}% wall_seconds={a['wall_seconds']:.1f}", flush=True)
    icpc = float(np.median([arms["icpc"]["epoch_seconds"], arms["icpc2"]["epoch_seconds"]]))
    ratio = icpc / arms["baseline"]["epoch_seconds"]
    print(f"GPU_CHECK epoch_ratio_icpc_over_baseline={ratio:.3f} (same steps and batch; ICPC median of 2 runs)",
          flush=True)
    summary = {"device": device, "torch": torch.__version__, "steps": steps, "step_ratio": mix, "arms": arms,
               "timm_steps": timm_steps, "timm_step_ratio": timm_mix,
               "epoch_ratio": ratio, "sizes": sizes}
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
