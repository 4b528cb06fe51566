"""Your own training loop on ICPC data: plain PyTorch DDP, resumable mid-epoch, at any world size.

    torchrun --standalone --nproc-per-node 2 examples/own_loop.py --data runs/data --epochs 3
    torchrun --standalone --nproc-per-node 2 examples/own_loop.py --data runs/data --epochs 3 \\
        --output runs/own --checkpoint-every 20       # kill it (even kill -9), run it again: it resumes
    python examples/own_loop.py --data runs/data --epochs 3 --output runs/own   # the same run on one process

The data side is four calls: ``icpc.ICPCLoader`` (this rank's batches; rank and world come from
torch.distributed), ``set_epoch``, ``state_dict`` / ``load_state_dict`` (saved in the loop's own
checkpoint: a few integers) and ``icpc.plan_cross_entropy`` (the loss over the global batch's
real samples). The model is any ICPC model plugin (``icpc.build_model``); a batch's fields are
in README "Use ICPC in your own training loop". Ends by printing the level-0 test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

import icpc
from icpc.config import ModelConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset written by 'icpc compress' (path or s3:// URL)")
    p.add_argument("--epochs", type=int, default=3, help="epochs to train (a resumed run counts from epoch 0)")
    p.add_argument("--output", default="", help="folder for checkpoint.pt (resumed from when present) and traces")
    p.add_argument("--batch-size", type=int, default=64, help="samples per rank and step")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="level draws, shuffling and the model's initialisation")
    p.add_argument("--model", default="transformer", help="model plugin: transformer, timm:NAME, hf:NAME, "
                   "PKG.MODULE:FACTORY or an icpc.models entry point")
    p.add_argument("--dim", type=int, default=96, help="model width (the built-in transformer)")
    p.add_argument("--depth", type=int, default=4, help="encoder blocks (the built-in transformer)")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers per rank (-1: spare cores)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: epoch ends)")
    p.add_argument("--trace", action="store_true", help="write the keys of every step to OUTPUT/trace-RANK.jsonl")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR/PORT
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))

    loader = icpc.ICPCLoader(args.data, batch_size=args.batch_size, seed=args.seed, num_workers=args.workers,
                             keys=args.trace)
    torch.manual_seed(args.seed)
    model_cfg = ModelConfig(name=args.model, dim=args.dim, depth=args.depth)
    model = icpc.build_model(loader.spec, model_cfg, loader.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, fused=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs * len(loader)))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    if args.output:
        os.makedirs(args.output, exist_ok=True)
    elif args.trace or args.checkpoint_every:
        raise SystemExit("--trace and --checkpoint-every write to --output: pass --output DIR")
    path = os.path.join(args.output, "checkpoint.pt") if args.output else ""
    if path and os.path.exists(path):  # resume: the loader continues with the batch after the saved one
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        if rank == 0:
            print(f"resumed at epoch {loader.epoch}, batch {loader.batches_done}", flush=True)
    step, samples, seconds = 0, 0, 0.0

    def save() -> None:
        if rank == 0 and path:  # every rank's loader state is the same: rank 0 writes it
            tmp = path + ".tmp"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "loader": loader.state_dict()}, tmp)
            os.replace(tmp, path)  # atomic: a kill never leaves half a checkpoint

    for epoch in range(loader.epoch, args.epochs):
        loader.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        for batch in loader:
            tokens, positions = batch["tokens"].to(device), batch["positions"].to(device)
            mask = batch["padding_mask"].to(device) if batch["padding_mask"] is not None else None
            logits = ddp(tokens, positions, batch["level"], mask)
            loss = icpc.plan_cross_entropy(logits, batch)  # mean over the global batch's real samples
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            samples += int((batch["weights"] > 0).sum())
            if args.trace:
                real = [k for k, w in zip(batch["keys"], batch["weights"].tolist()) if w > 0]
                with open(os.path.join(args.output, f"trace-{rank}.jsonl"), "a") as f:
                    f.write(json.dumps({"epoch": epoch, "segments": len(loader.state_dict()["segments"]),
                                        "done": loader.batches_done, "keys": real}) + "\n")
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                save()
        seconds += time.perf_counter() - t0
        save()  # the loader has moved on to the next epoch
        if rank == 0:
            print(f"epoch {epoch + 1}: last loss {loss.item():.4f}", flush=True)

    # level-0 accuracy on the test split: every test sample once, over the ranks (weight-0 copies ignored)
    test = icpc.ICPCLoader(args.data, split="test", batch_size=256, schedule=icpc.LevelSchedule(baseline=True),
                           num_workers=0)
    model.eval()
    counts = torch.tensor([0.0, 0.0, samples], dtype=torch.float64)   # correct, tested, trained samples
    with torch.no_grad():
        for batch in test:
            mask = batch["padding_mask"].to(device) if batch["padding_mask"] is not None else None
            logits = model(batch["tokens"].to(device), batch["positions"].to(device), 0, mask)
            hit = (logits.argmax(1).cpu() == batch["labels"]).double()
            counts[:2] += torch.stack([(hit * batch["weights"]).sum(), batch["weights"].sum().double()])
    if world > 1:
        dist.all_reduce(counts)
    if rank == 0:
        print(json.dumps({"train_samples": int(counts[2]), "train_seconds": round(seconds, 3),
                          "samples_per_s": round(float(counts[2]) / max(seconds, 1e-9), 1)}))
        print(f"level-0 test accuracy: {counts[0] / counts[1]:.4f}", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
