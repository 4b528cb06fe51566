"""ICPC data in a Lightning Fabric loop: Fabric runs the processes and DDP, ICPC gives each rank its batches.

    pip install -e '.[lightning]'
    python examples/fabric_loop.py --data runs/data --epochs 3 --devices 2      # Fabric starts 2 processes
    python examples/fabric_loop.py --data runs/data --epochs 3 --devices 2 --output runs/fabric  # resumable

``fabric.save`` / ``fabric.load`` take the loader like a module: it has ``state_dict`` and
``load_state_dict``, so a restarted run continues with the batch after the saved one. The loss is
``icpc.plan_cross_entropy`` (padding copies and partial global batches weighed right under DDP).
"""

from __future__ import annotations

import argparse
import os

import lightning as L
import torch

import icpc
from icpc.config import ModelConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset written by 'icpc compress' (path or s3:// URL)")
    p.add_argument("--epochs", type=int, default=3, help="epochs to train")
    p.add_argument("--devices", type=int, default=1, help="processes (CPU) or GPUs")
    p.add_argument("--output", default="", help="folder for fabric.ckpt (resumed from when present)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per rank and step")
    p.add_argument("--dim", type=int, default=96, help="model width (the built-in transformer)")
    p.add_argument("--depth", type=int, default=4, help="encoder blocks")
    args = p.parse_args()

    fabric = L.Fabric(accelerator="auto", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto")
    fabric.launch()
    fabric.seed_everything(0)
    loader = icpc.ICPCLoader(args.data, batch_size=args.batch_size, rank=fabric.global_rank,
                             world_size=fabric.world_size, num_workers=0 if fabric.device.type == "cpu" else -1)
    model = icpc.build_model(loader.spec, ModelConfig(dim=args.dim, depth=args.depth), loader.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    model, optimizer = fabric.setup(model, optimizer)

    path = os.path.join(args.output, "fabric.ckpt") if args.output else ""
    state = {"model": model, "optimizer": optimizer, "loader": loader}
    if path and os.path.exists(path):
        fabric.load(path, state)  # restores the model, the optimizer and the loader's position in place
    for epoch in range(loader.epoch, args.epochs):
        loader.set_epoch(epoch)
        model.train()
        for batch in loader:
            mask = batch["padding_mask"].to(fabric.device) if batch["padding_mask"] is not None else None
            logits = model(batch["tokens"].to(fabric.device), batch["positions"].to(fabric.device),
                           batch["level"], mask)
            loss = icpc.plan_cross_entropy(logits, batch, world_size=fabric.world_size)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        if path:
            fabric.save(path, state)
        fabric.print(f"epoch {epoch + 1}: last loss {loss.item():.4f}")

    test = icpc.ICPCLoader(args.data, split="test", batch_size=256, schedule=icpc.LevelSchedule(baseline=True),
                           rank=fabric.global_rank, world_size=fabric.world_size, num_workers=0)
    model.eval()
    correct = total = torch.zeros((), dtype=torch.float64, device=fabric.device)
    with torch.no_grad():
        for batch in test:
            mask = batch["padding_mask"].to(fabric.device) if batch["padding_mask"] is not None else None
            logits = model(batch["tokens"].to(fabric.device), batch["positions"].to(fabric.device), 0, mask)
            weights = batch["weights"].to(fabric.device).double()
            correct = correct + ((logits.argmax(1) == batch["labels"].to(fabric.device)).double() * weights).sum()
            total = total + weights.sum()
    correct, total = fabric.all_reduce(correct, reduce_op="sum"), fabric.all_reduce(total, reduce_op="sum")
    fabric.print(f"level-0 test accuracy: {float(correct / total):.4f}")


if __name__ == "__main__":
    main()
