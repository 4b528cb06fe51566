"""The ``icpc`` console script: one subcommand per job, each a thin layer over a library function.

    icpc datasets fashion-mnist --output data/fmnist --train 6000 --test 1000
    icpc compress --modality image --input data/fmnist --output runs/data
    icpc train --nproc-per-node 2 --data runs/data --output runs/icpc
    icpc evaluate --checkpoint runs/icpc/last.pt
    icpc calibrate --checkpoint runs/icpc/last.pt   # certified thresholds -> runs/icpc/thresholds.json
    icpc serve --checkpoint runs/icpc/last.pt       # HTTP cascade on http://127.0.0.1:8000
    icpc demo                       # all of the above on Fashion-MNIST, ICPC vs baseline
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from icpc import cli_help
from icpc.config import ConfigError, EvalConfig, TrainConfig, apply_overrides, finalize, to_dict
from icpc.contract import STRATEGIES
from icpc.demo import DATASETS, DEMOS
from icpc.pipeline.config import compress_config_class
from icpc.pipeline.modalities import registry

RAY_COMMANDS = ("compress", "serve", "train", "demo")  # may start an embedded Ray (train: with --ray-workers)


def _add_set(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=cli_help.set_help(command))
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icpc", description=cli_help.OVERVIEW,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(command: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(command, help=summary, description=cli_help.DESCRIPTIONS[command],
                              epilog=cli_help.epilog(command), formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("datasets", "build a demo data set from a Debian package (offline)")
    p.add_argument("name", choices=sorted(DATASETS), help="which data set")
    p.add_argument("--output", required=True, help="folder to write (in a layout icpc compress reads)")
    p.add_argument("--train", type=int, default=0, help="training samples (0 = the data set's default or all)")
    p.add_argument("--test", type=int, default=0, help="test samples (0 = the data set's default or all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draw")

    p = add("compress", "Ray job: every input at every level into tar shards, index.parquet, manifest.json")
    p.add_argument("--modality", default="image", choices=sorted(registry()), help="what the input holds")
    p.add_argument("--input", help="image/video/audio: ROOT/CLASS/FILE, ROOT/{train,val,test}/CLASS/FILE or a "
                   "CSV of path,label[,split]; text: a CSV/JSONL/Parquet table (or a folder of train/val/test tables); "
                   "a path or a URL (s3://, gs://)")
    p.add_argument("--output", help="dataset folder, a path or a URL: manifest.json and a version folder with the "
                   "shards, index.parquet and rejects.parquet")
    p.add_argument("--address", help="Ray cluster address (default: embedded Ray, or RAY_ADDRESS under ray job submit)")
    p.add_argument("--shard-samples", type=int, help="samples per shard (default 500)")
    p.add_argument("--limit", type=int, help="at most this many samples per split (quick runs)")
    p.add_argument("--seed", type=int, help="seed of the val/test carve-out")
    p.add_argument("--overwrite", action="store_true", help="build a new dataset beside the one in --output, then "
                   "switch to it (readers see the old one or the new one, never a mix)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output: shards already "
                   "sealed (sha256 checked) are kept, the rest is built (starts a run when there is none)")
    p.add_argument("--max-reject-fraction", type=float, help="fail when one stage (scan, read, compress) rejects "
                   "more than this share of the inputs (default 0.05; 1 = never)")
    p.add_argument("--sample-timeout", type=float, help="seconds one input may take to decode and compress before it "
                   "is rejected as a hang (default 120)")
    _add_set(p, "compress")

    p = add("train", "DDP training (torchrun), a fresh level per sample per epoch")
    p.add_argument("--data", help="output folder of icpc compress (default runs/data)")
    p.add_argument("--output", help="folder for last.pt, checkpoints/, metrics.csv, TensorBoard logs "
                   "(default runs/train)")
    p.add_argument("--epochs", type=int, help="epochs (default 5)")
    p.add_argument("--batch-size", type=int, help="samples per rank per micro-step (default 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    p.add_argument("--baseline", action="store_true", help="always use level 0 (the A/B reference)")
    p.add_argument("--model", metavar="REF", help="model plugin (sets model.name): transformer (default), "
                   "timm:NAME (e.g. timm:vit_tiny_patch16_224), hf:PATH_OR_NAME, PKG.MODULE:FACTORY or an "
                   "'icpc.models' entry point; arguments with --set model.args.KEY=JSON, pretrained weights with "
                   "--set model.weights=PATH_OR_URL")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="position strategy (default consistent)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt, mid-epoch included "
                   "(at the same or another number of ranks)")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N optimizer steps (default: epoch ends)")
    p.add_argument("--nproc-per-node", type=int, default=0,
                   help="launch this many processes with torchrun (default: run as launched)")
    p.add_argument("--ray-workers", type=int, default=0,
                   help="launch this many workers with Ray Train instead of torchrun")
    p.add_argument("--address", help="Ray address for --ray-workers (default: embedded Ray)")
    p.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPUs each Ray Train worker reserves")
    _add_set(p, "train")

    p = add("evaluate", "accuracy/time per level, the calibrated cascade, a threshold-sweep curve")
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default runs/train/last.pt)")
    p.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", help="train, val or test (default test)")
    p.add_argument("--output", help="report folder (default CHECKPOINT_DIR/eval)")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="evaluate with another position strategy than the one trained with")
    p.add_argument("--device", help="where the model runs: auto (default: cuda when there is a GPU), cpu, cuda, cuda:N")
    _add_set(p, "evaluate")

    p = add("calibrate", "cascade thresholds whose accuracy loss vs level 0 is certified (Learn then Test)")
    p.add_argument("--checkpoint", help="checkpoint to calibrate (default runs/train/last.pt)")
    p.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", help="held-out split the thresholds are chosen on (default val)")
    p.add_argument("--epsilon", type=float, help="loss the cascade may have vs level 0 (default 0.01 = 1 accuracy point)")
    p.add_argument("--delta", type=float, help="chance the guarantee fails over the calibration samples (default 0.1)")
    p.add_argument("--loss", choices=["accuracy", "disagreement"],
                   help="accuracy (default: level 0 right, the cascade wrong) or disagreement (no labels used)")
    p.add_argument("--cost", choices=["serving", "ms", "tokens"],
                   help="per-level cost: serving (default: ms the server pays per level tried, compression + model at "
                        "the serving batch on the serving device), ms (forward ms, batch 256) or tokens")
    p.add_argument("--device", help="where the model runs: auto (default: cuda when there is a GPU), cpu, cuda, cuda:N")
    p.add_argument("--output", help="folder for thresholds.json and calibrate.png (default: the checkpoint's)")
    _add_set(p, "calibrate")

    p = add("serve", "the cascade as a Ray Serve HTTP app on embedded Ray (127.0.0.1)")
    p.add_argument("--checkpoint", help="checkpoint to serve (default runs/train/last.pt)")
    p.add_argument("--thresholds", help="calibration file (default CHECKPOINT_DIR/thresholds.json)")
    p.add_argument("--host", help="HTTP address (default 127.0.0.1; Serve's HTTP API has no authentication)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request (no @serve.batch)")
    p.add_argument("--device", help="model device: auto (default: cuda when the model replica has a GPU), cpu, cuda")
    p.add_argument("--gpus", type=float, help="Ray GPUs per model replica (default 0; 0.25 = four replicas per GPU)")
    _add_set(p, "serve")

    p = add("demo", "one modality end to end: build data, compress, train ICPC + baseline, evaluate")
    p.add_argument("--modality", default="image", choices=sorted(DEMOS), help="which modality's demo")
    p.add_argument("--workdir", default="runs/demo", help="folder for everything the demo writes (default runs/demo)")
    p.add_argument("--train", type=int, default=0, help="training samples (default: the modality's, e.g. 4000 images)")
    p.add_argument("--test", type=int, default=0, help="test samples (default: the modality's)")
    p.add_argument("--epochs", type=int, default=0, help="epochs for each of ICPC and the baseline (default: the modality's, e.g. 30 for image)")
    p.add_argument("--nproc-per-node", type=int, default=2, help="DDP processes (gloo on CPU)")
    return parser


def _config(cls, args: argparse.Namespace, mapping: dict[str, str], needed_to_run: tuple[str, ...] = ()):
    """The resolved config; with ``--print-config`` the fields in ``needed_to_run`` may stay empty."""
    cfg = cls()
    for arg, field in mapping.items():
        value = getattr(args, arg, None)
        if value is not None and value is not False:  # 0 is a value the user gave (0 == False in Python)
            setattr(cfg, field, value)
    if not (args.print_config and needed_to_run):
        return finalize(cfg, args.set)
    errors = apply_overrides(cfg, list(args.set)) + [
        e for e in cfg.validate() if not (e.startswith(needed_to_run) and not getattr(cfg, e.split(":")[0], True))]
    if errors:
        raise ConfigError(errors)
    return cfg


def _print_config(args: argparse.Namespace, cfg) -> bool:
    """``--print-config``: show the resolved config as JSON instead of running."""
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
    return args.print_config


def cmd_compress(args: argparse.Namespace) -> int:
    cfg = _config(compress_config_class(), args, {"modality": "modality", "input": "input", "output": "output",
                                         "address": "address", "shard_samples": "shard_samples",
                                         "limit": "limit", "seed": "seed", "overwrite": "overwrite",
                                         "resume": "resume", "max_reject_fraction": "max_reject_fraction",
                                         "sample_timeout": "sample_timeout_s"}, needed_to_run=("input:",))
    if _print_config(args, cfg):
        return 0
    from icpc.pipeline.job import ShardFailedError, format_summary, run_compress

    try:
        print(format_summary(run_compress(cfg)))
    except ShardFailedError as exc:
        print(f"icpc compress: error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    if args.model:  # before --set, so an explicit --set model.name wins
        args.set = [f"model.name={args.model}", *args.set]
    cfg = _config(TrainConfig, args, {"data": "data", "output": "output", "epochs": "epochs",
                                      "batch_size": "batch_size", "lr": "lr", "baseline": "baseline",
                                      "strategy": "strategy", "resume": "resume",
                                      "checkpoint_every": "checkpoint_every"})
    if _print_config(args, cfg):
        return 0
    if args.nproc_per_node and args.ray_workers:
        raise ValueError("--nproc-per-node (torchrun) and --ray-workers (Ray Train) exclude each other; pick one")
    if args.ray_workers:
        import torch

        from icpc.training.ray_train import run_ray_train

        run_ray_train(cfg, args.ray_workers, args.address, torch.cuda.is_available(), args.ray_cpus_per_worker)
        return 0
    if args.nproc_per_node and "RANK" not in os.environ:
        from icpc.training.launch import launch_torchrun, without_nproc

        return launch_torchrun(args.nproc_per_node, without_nproc(argv), cfg.output)
    from icpc.training.distributed import detect_world
    from icpc.training.train import train

    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank: its error reaches torchrun's failure summary
        from torch.distributed.elastic.multiprocessing.errors import record

        record(train)(cfg, detect_world())
        # Everything is written (checkpoint writer joined, logs closed, lock released, group left).
        # Skip interpreter finalisation: C++ static destructors of gloo's and torch's threads can
        # abort a rank that has finished (SIGABRT at exit, seen here after a complete 8-epoch run),
        # which torchrun would report as a failed job. Loader workers watch their parent and exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    train(cfg, detect_world())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(EvalConfig, args, {"checkpoint": "checkpoint", "data": "data", "split": "split",
                                     "output": "output", "strategy": "strategy", "device": "device"})
    if _print_config(args, cfg):
        return 0
    from icpc.inference.evaluate import evaluate, format_report

    print(format_report(evaluate(cfg)))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from icpc.inference.calibrate import CalibrateConfig, calibrate, format_report

    cfg = _config(CalibrateConfig, args, {"checkpoint": "checkpoint", "data": "data", "split": "split",
                                          "epsilon": "epsilon", "delta": "delta", "loss": "loss",
                                          "cost": "cost", "device": "device",
                                          "output": "output"})
    if _print_config(args, cfg):
        return 0
    print(format_report(calibrate(cfg)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from icpc.inference.serve import ServeConfig, run_server

    cfg = _config(ServeConfig, args, {"checkpoint": "checkpoint", "thresholds": "thresholds", "host": "host",
                                      "port": "port", "device": "device", "gpus": "classifier_gpus"})
    cfg.batching = cfg.batching and not args.no_batching
    if _print_config(args, cfg):
        return 0
    run_server(cfg)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    counts = DATASETS[args.name](args.output, args.train, args.test, args.seed)
    print(f"wrote {args.name} {counts} to {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from icpc.demo.run import run_demo

    return run_demo(args)


def _default_ray_auth(args: argparse.Namespace) -> None:
    """An embedded Ray (no --address, no RAY_ADDRESS) gets Ray's own default, token authentication, set
    explicitly: Ray 2.60 would choose it too, but warns on every start when RAY_AUTH_MODE is unset."""
    starts_ray = args.command in RAY_COMMANDS and (args.command != "train" or args.ray_workers)
    if starts_ray and not getattr(args, "print_config", False) and not getattr(args, "address", None) \
            and "RAY_AUTH_MODE" not in os.environ and "RAY_ADDRESS" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _default_ray_auth(args)
    try:
        if args.command == "compress":
            return cmd_compress(args)
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "datasets":
            return cmd_datasets(args)
        return cmd_demo(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"icpc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
