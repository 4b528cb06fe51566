"""Benchmark: where a MiniLM fine-tuning step's time goes, per level, on real text batches.

    .venv/bin/python bench/minilm_step.py --data runs/text-minilm --steps 20 --output bench/results/minilm-step.json

One process with one thread (what each of two gloo ranks gets on a 2-core machine). For each
level and each setting of ``model.freeze_word_embeddings`` it times, per step on real test-split
batches (``eval_batches``, the trainer's own decoding and padding): forward, backward, the gloo
all-reduce of the gradients DDP would send (two processes on 127.0.0.1, one flat buffer of the
trainable gradients' size), and AdamW's step, for each of torch's three AdamW implementations on the
same gradients (per-tensor loop, ``foreach``, ``fused``; the step column is the fused one, which
``icpc train`` uses). The settings, levels and implementations are interleaved step by step, so
machine noise hits them alike; medians are reported. Only the all-reduce needs a second process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icpc.config import ModelConfig  # noqa: E402
from icpc.dataset import open_dataset  # noqa: E402
from icpc.training.data import eval_batches  # noqa: E402
from icpc.models import build_model  # noqa: E402
from icpc.training.model import param_groups  # noqa: E402


def _peer(port: int, numel: int, rounds: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
    buf = torch.zeros(numel)
    for _ in range(rounds):
        dist.all_reduce(buf)
    dist.destroy_process_group()


def allreduce_seconds(numel: int, rounds: int, port: int = 29611) -> float:
    """Median seconds of one gloo all-reduce of ``numel`` fp32 values between two local processes."""
    peer = mp.get_context("spawn").Process(target=_peer, args=(port, numel, rounds))
    peer.start()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
    buf, times = torch.ones(numel), []
    for _ in range(rounds):
        t = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t)
    dist.destroy_process_group()
    peer.join()
    return statistics.median(times[1:] if rounds > 1 else times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress (text.tokenizer=minilm)")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--steps", type=int, default=20, help="timed steps per (level, setting)")
    p.add_argument("--levels", default="0,4")
    p.add_argument("--output", help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = open_dataset(args.data)
    spec, shards = data.spec, data.shards("test")
    levels = [int(x) for x in args.levels.split(",")]
    batches = {lv: list(eval_batches(shards, spec, lv, batch_size=args.batch_size, strategy="consistent",
                                     limit=args.batch_size * (args.steps + 2)))[:args.steps + 2] for lv in levels}
    settings = {"all trainable": False, "word embeddings frozen": True}
    impls = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    models, optims = {}, {}
    for name, frozen in settings.items():
        model = build_model(spec, ModelConfig(name="hf:minilm", freeze_word_embeddings=frozen), num_classes=10)
        models[name] = model
        optims[name] = {impl: torch.optim.AdamW(param_groups(model, 0.05), lr=1e-5, **kw) for impl, kw in impls.items()}
    times = {(n, lv, part): [] for n in settings for lv in levels for part in ("forward", "backward", *impls)}
    for i in range(args.steps + 2):
        for lv in levels:
            b = batches[lv][i]
            for name in settings:
                model = models[name]
                t0 = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(
                    model(b["tokens"], b["positions"], lv, b["padding_mask"]), b["labels"])
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                steps = {}
                order = list(impls)[i % len(impls):] + list(impls)[:i % len(impls)]  # rotated per step
                for impl in order:
                    t3 = time.perf_counter()
                    optims[name][impl].step()
                    steps[impl] = time.perf_counter() - t3
                model.zero_grad(set_to_none=True)
                if i >= 2:  # warm-up steps are not counted
                    for part, s in (("forward", t1 - t0), ("backward", t2 - t1), *steps.items()):
                        times[(name, lv, part)].append(s)
    trainable = {n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, m in models.items()}
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    reduce_s = {n: allreduce_seconds(k, rounds=args.steps) for n, k in trainable.items()}
    padded = {lv: statistics.mean(b["tokens"].shape[1] for b in batches[lv][2:]) for lv in levels}
    rows = []
    for name in settings:
        for lv in levels:
            med = {part: statistics.median(times[(name, lv, part)]) for part in ("forward", "backward", *impls)}
            mean_len = statistics.mean(
                float((~b["padding_mask"]).sum(1).float().mean()) if b["padding_mask"] is not None
                else float(b["tokens"].shape[1]) for b in batches[lv][2:])
            rows.append({"setting": name, "level": lv, "trainable_M": trainable[name] / 1e6,
                         "padded_len": padded[lv], "mean_len": mean_len, **med, "allreduce": reduce_s[name],
                         "step": med["forward"] + med["backward"] + med["fused"] + reduce_s[name]})
    print(f"| setting | level | trainable M | mean tokens | forward s | backward s | all-reduce s | AdamW s | "
          f"step s | x level 0 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["setting"] == r["setting"] and x["level"] == levels[0])
        print(f"| {r['setting']} | {r['level']} | {r['trainable_M']:.1f} | {r['mean_len']:.1f} | {r['forward']:.3f} | "
              f"{r['backward']:.3f} | {r['allreduce']:.3f} | {r['fused']:.3f} | {r['step']:.3f} | "
              f"{r['step'] / ref['step']:.2f} |")
    print("(all-reduce: DDP overlaps part of it with the backward pass, so a real step is at most this sum)\n")
    print("| setting | AdamW per-tensor s | foreach s | fused s | per-tensor / fused |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["level"] == levels[0]:  # the optimizer's cost does not depend on the level
            print(f"| {r['setting']} | {r['per-tensor']:.4f} | {r['foreach']:.4f} | {r['fused']:.4f} | "
                  f"{r['per-tensor'] / r['fused']:.1f} |")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"batch_size": args.batch_size, "steps": args.steps,
                                                 "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                 "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
