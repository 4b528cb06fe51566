"""ICPC text data in the Hugging Face Trainer: batches with HF names go straight into a BERT-style encoder.

    torchrun --standalone --nproc-per-node 2 examples/hf_trainer.py --data runs/text --epochs 3
    python examples/hf_trainer.py --data runs/text --epochs 3                   # one process

``icpc.ICPCLoader(..., aliases=["hf"])`` adds ``input_ids``, ``position_ids`` (each kept token's
index in the unpruned text) and ``attention_mask`` (1 = keep) to every batch, so the compressed
text goes into ``BertForSequenceClassification`` with no adapter: the model adds
``pos_table[position_ids]``. The Trainer gets the loader as its train dataloader (it calls
``len`` and ``set_epoch``) and the loss from ``icpc.plan_cross_entropy``. The encoder here is a
small BERT trained from scratch on the dataset's own vocabulary (offline); a pretrained encoder
needs data compressed with its tokenizer. Ends by printing the level-0 test accuracy.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import icpc

HF_INPUTS = ("input_ids", "position_ids", "attention_mask")


class ICPCTrainer(Trainer):
    """The Trainer reading an ``icpc.ICPCLoader`` and weighing the loss by the plan."""

    def __init__(self, *args, icpc_loader: icpc.ICPCLoader, **kwargs):
        super().__init__(*args, **kwargs)
        self.icpc_loader = icpc_loader

    def get_train_dataloader(self):
        return self.icpc_loader  # already this rank's share: no sampler, no re-sharding

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{k: inputs[k] for k in HF_INPUTS})
        loss = icpc.plan_cross_entropy(outputs.logits, inputs, world_size=self.args.world_size)
        return (loss, outputs) if return_outputs else loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a text dataset written by 'icpc compress --modality text'")
    p.add_argument("--epochs", type=int, default=3, help="epochs to train")
    p.add_argument("--batch-size", type=int, default=32, help="samples per rank and step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--output", default="", help="the Trainer's output_dir (default: a temporary folder)")
    args = p.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    loader = icpc.ICPCLoader(args.data, batch_size=args.batch_size, aliases=["hf"], rank=rank, world_size=world,
                             num_workers=0)
    tok = loader.spec.tokenization
    if loader.spec.modality != "text":
        raise SystemExit(f"--data {args.data} holds {loader.spec.modality}: this example needs text")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=int(tok["vocab_size"]), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=loader.spec.reference_grid[0], num_labels=loader.num_classes,
        pad_token_id=int(tok.get("pad_id", 0))))
    out = args.output or tempfile.mkdtemp(prefix="icpc-hf-")
    targs = TrainingArguments(output_dir=out, num_train_epochs=args.epochs, learning_rate=args.lr,
                              lr_scheduler_type="cosine", logging_steps=10, save_strategy="no",
                              report_to=[], use_cpu=not torch.cuda.is_available(),
                              ddp_backend=None if torch.cuda.is_available() else "gloo", disable_tqdm=True)
    trainer = ICPCTrainer(model=model, args=targs, icpc_loader=loader)
    trainer.train()

    test = icpc.ICPCLoader(args.data, split="test", batch_size=256, schedule=icpc.LevelSchedule(baseline=True),
                           aliases=["hf"], rank=rank, world_size=world, num_workers=0)
    net = trainer.model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in test:
            logits = net(**{k: batch[k].to(trainer.args.device) for k in HF_INPUTS}).logits.cpu()
            counts += torch.stack([((logits.argmax(1) == batch["labels"]).double() * batch["weights"]).sum(),
                                   batch["weights"].sum().double()])
    if world > 1:
        torch.distributed.all_reduce(counts)
    if rank == 0:
        print(f"optimizer steps: {trainer.state.global_step}", flush=True)
        print(f"level-0 test accuracy: {counts[0] / counts[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
