"""ViT-S/16 (timm, random init) training-step time per compression level on real 224 px photographs, beside
what the token counts predict from the model's own FLOPs.

    icpc datasets wallpapers --output data/photos224 --train 64 --test 8
    nice -n 5 .venv/bin/python bench/vit_levels.py --photos data/photos224/images --rounds 7 --batch 8
    .venv/bin/python bench/vit_levels.py --photos data/photos224/images --smoke    # seconds: checks the script

The photos go through the project's image compressor (ladder 224/192/160/128/96 px, 16 px patches, RGB:
196/144/100/64/36 tokens) and ``--model timm:vit_small_patch16_224`` through ``icpc.models.build_model``.
A step is forward + cross-entropy + backward + AdamW step on one batch. Levels are interleaved: every
round times each level once, in an order rotated per round, so machine-load drift hits all levels alike.
Per level: the median step time, its ratio to level 0 (median of the per-round ratios), and the
prediction from ``torch.utils.flop_counter`` on one forward + backward: the linear part (every op but
attention: N tokens) and the quadratic part (scaled-dot-product attention: N^2), so the measured ratio
can be read against the physical limit for this model. ICPC's epoch / baseline epoch with the uniform
draw is the mean of the level ratios. Writes bench/results/vit_levels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ATTENTION_OPS = ("bmm",)  # q @ k^T and attn @ v of timm's unfused attention (the flop counter has no CPU SDPA formula)


def level_batches(photos: Path, spec, batch: int):
    """(tokens (B, N, 768) uint8, positions (B, N) int64) per level from the first ``batch`` photos, compressed
    by the project's image modality."""
    import torch

    from icpc.pipeline.modalities.image import MODALITY

    files = sorted(photos.glob("train/*/*.jpg"))[:batch]
    if len(files) < batch:
        raise SystemExit(f"{photos}: {len(files)} photos under train/*/*.jpg, {batch} needed; build them with "
                         f"icpc datasets wallpapers --output data/photos224 --train 64")
    per_sample = [MODALITY.compress_bytes(f.read_bytes(), spec).levels for f in files]
    return [(torch.from_numpy(np.stack([s[lv][0] for s in per_sample])),
             torch.from_numpy(np.stack([s[lv][1] for s in per_sample]).astype(np.int64)))
            for lv in range(len(spec.ladder))]


def flops(model, tokens, positions, level: int) -> dict[str, float]:
    """FLOPs of one forward + backward, split into attention (quadratic in N) and the rest (linear in N)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(tokens, positions, level).float().sum().backward()
    model.zero_grad(set_to_none=True)
    ops = counter.get_flop_counts()["Global"]
    quad = sum(v for op, v in ops.items() if any(a in str(op) for a in ATTENTION_OPS))
    total = sum(ops.values())
    return {"total": float(total), "quadratic": float(quad), "linear": float(total - quad)}


def counting_model(spec, cfg):
    """The same model with timm's attention unfused, so q @ k^T and attn @ v show up as counted matmuls."""
    from timm.layers import set_fused_attn

    from icpc.models import build_model

    set_fused_attn(False)
    try:
        return build_model(spec, cfg, num_classes=72).train()
    finally:
        set_fused_attn(True)


def time_steps(model, opt, batches, labels, rounds: int) -> np.ndarray:
    """(rounds, levels) seconds per training step, levels interleaved in an order rotated each round."""
    import torch

    levels = len(batches)
    out = np.zeros((rounds, levels))
    for r in range(-1, rounds):  # round -1 warms up every level
        for level in np.roll(np.arange(levels), r):
            tokens, positions = batches[level]
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(tokens, positions, int(level)), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r >= 0:
                out[r, level] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", default="data/photos224/images", help="ImageFolder of 224 px photos (train/CLASS/*.jpg)")
    p.add_argument("--model", default="timm:vit_small_patch16_224", help="model plugin reference")
    p.add_argument("--batch", type=int, default=8, help="photos per step")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (each times every level once)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--smoke", action="store_true", help="depth-1 model, 2 photos, 1 round: checks the script")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "vit_levels.json"), help="result JSON")
    args = p.parse_args()
    import torch

    from icpc.config import ModelConfig
    from icpc.models import build_model
    from icpc.pipeline.modalities.image import ImageConfig, build_spec
    from icpc.training.model import param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.batch, args.rounds = 2, 1
    spec = build_spec(ImageConfig(sides=[224, 192, 160, 128, 96], patch=16, channels=3))
    batches = level_batches(Path(args.photos), spec, args.batch)
    torch.manual_seed(0)
    cfg = ModelConfig(name=args.model, args={"depth": 1} if args.smoke else {})
    counting = counting_model(spec, cfg)
    counts = [flops(counting, *batches[lv], lv) for lv in range(len(batches))]
    del counting
    model = build_model(spec, cfg, num_classes=72).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=True)
    labels = torch.arange(args.batch) % 72
    seconds = time_steps(model, opt, batches, labels, args.rounds)

    rows, f0 = [], counts[0]["total"]
    for lv, level in enumerate(spec.ladder):
        c = counts[lv]
        rows.append({"level": lv, "side": int(level.params["side"]), "tokens": level.tokens,
                     "ms_median": 1000 * float(np.median(seconds[:, lv])),
                     "ratio_measured": float(np.median(seconds[:, lv] / seconds[:, 0])),
                     "ratio_flops": c["total"] / f0,
                     "ratio_tokens": level.tokens / spec.ladder[0].tokens,
                     "quadratic_share": c["quadratic"] / c["total"], "gflops": c["total"] / 1e9})
    epoch = {"measured": float(np.mean([r["ratio_measured"] for r in rows])),
             "flops": float(np.mean([r["ratio_flops"] for r in rows])),
             "tokens": float(np.mean([r["ratio_tokens"] for r in rows]))}
    print(f"{args.model} batch {args.batch}, {args.rounds} interleaved rounds, {torch.get_num_threads()} threads "
          f"({platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f})")
    print(f"{'level':>5} {'side':>5} {'tokens':>6} {'ms':>8} {'x level0':>9} {'FLOPs x':>8} {'tokens x':>9} "
          f"{'attn share':>10}")
    for r in rows:
        print(f"{r['level']:>5} {r['side']:>5} {r['tokens']:>6} {r['ms_median']:>8.1f} {r['ratio_measured']:>9.3f} "
              f"{r['ratio_flops']:>8.3f} {r['ratio_tokens']:>9.3f} {r['quadratic_share']:>10.3f}")
    print(f"ICPC epoch / baseline epoch (uniform draw over {len(rows)} levels): measured {epoch['measured']:.3f}, "
          f"FLOPs predict {epoch['flops']:.3f}, token count alone {epoch['tokens']:.3f}")
    if not args.smoke:
        Path(args.output).write_text(json.dumps({
            "command": " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": args.model, "batch": args.batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "levels": rows, "epoch_ratio": epoch,
            "seconds": seconds.tolist()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
