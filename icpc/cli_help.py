"""What ``icpc --help`` and each ``icpc SUBCOMMAND --help`` say: descriptions, defaults and runnable examples.

Every example line below is run by tests/icpc/test_cli_help.py (with ``--print-config`` where the
subcommand has it), so a help text cannot show a flag or a ``--set`` key its command rejects.
"""

from __future__ import annotations

OVERVIEW = """\
Input Compression with Positional Consistency (arXiv 2312.12385): train and serve transformers on inputs
compressed at several levels, every token keeping its position in the uncompressed input.

  compress   Ray job: every input at every level into tar shards (one manifest.json, a version folder
             with the shards, index.parquet and rejects.parquet)
  train      DDP training, a level drawn per sample and epoch; writes --output (default runs/train):
             last.pt, checkpoints/, metrics.csv, tb/, config.json
  evaluate   accuracy and time per level, the cascade; reads --checkpoint (default runs/train/last.pt)
  calibrate  certified cascade thresholds beside the checkpoint (default runs/train/last.pt)
  serve      the cascade over HTTP on 127.0.0.1 (default runs/train/last.pt)
  demo       all of it on a demo data set, ICPC against the baseline (default --workdir runs/demo)

Commands that start an embedded Ray (compress, serve, train --ray-workers, demo) without --address or
RAY_ADDRESS set RAY_AUTH_MODE=token when it is unset: Ray's token authentication, with the token in
~/.ray/auth_token, and no warning about it. Set RAY_AUTH_MODE yourself to choose otherwise.
"""

DESCRIPTIONS = {
    "compress": "Compress every input at every level of the modality's ladder with a Ray job (embedded Ray, or a "
                "cluster with --address) into OUTPUT: manifest.json (written last), a version folder v-ID/ with "
                "the tar shards, index.parquet (one row per sample) and rejects.parquet (one row per input that "
                "could not be used).",
    "train": "DDP training on a compressed dataset (default --data runs/data), each sample at a level drawn from "
             "(seed, epoch, key). Writes OUTPUT (default runs/train): last.pt, checkpoints/step-N.pt, "
             "metrics.csv, tb/, ranks/, config.json. --nproc-per-node N starts torchrun itself.",
    "evaluate": "Accuracy and time per level, the cascade at its calibrated thresholds and over a threshold "
                "sweep, on the dataset the checkpoint was trained on (default checkpoint runs/train/last.pt). "
                "Writes the report (eval.json, CSV tables, a plot) in CHECKPOINT_DIR/eval.",
    "calibrate": "Cascade thresholds whose loss against level 0 is certified on a held-out split (Learn then Test: "
                 "at most --epsilon with probability at least 1 - --delta), at the lowest cost (default checkpoint "
                 "runs/train/last.pt). Writes thresholds.json and calibrate.png beside the checkpoint.",
    "serve": "The cascade as a Ray Serve HTTP app on an embedded Ray, bound to 127.0.0.1:8000 by default "
             "(default checkpoint runs/train/last.pt, thresholds CHECKPOINT_DIR/thresholds.json).",
    "demo": "One modality end to end, offline: build the demo data set, compress it (Ray job), train ICPC and the "
            "baseline (2 DDP processes), evaluate both, calibrate the cascade, print the comparison and write "
            "curves.png. Everything goes to --workdir (default runs/demo).",
    "datasets": "Build a demo data set from a Debian package, offline, in a layout icpc compress reads.",
}

# (command line, what it does); each line runs as shown (tests parse every one, and run it with
# --print-config where the subcommand has that flag).
EXAMPLES = {
    "compress": [
        ("icpc compress --modality image --input data/fmnist --output runs/data", "Fashion-MNIST, 28 px ladder"),
        ("icpc compress --modality image --input ~/photos --output runs/photos --set image.sides=224,192,160,128,96 "
         "--set image.patch=16 --set image.channels=3", "your photos at 224 px"),
        ("icpc compress --modality image --input data/fmnist --output runs/data --resume", "after a crash"),
        ("icpc compress --modality text --print-config", "every field of a modality and its default"),
    ],
    "train": [
        ("icpc train --nproc-per-node 2 --data runs/data --output runs/icpc --epochs 30", "uniform level draw"),
        ("icpc train --nproc-per-node 2 --data runs/data --output runs/base --epochs 30 --baseline", "level 0 only"),
        ("icpc train --nproc-per-node 2 --data runs/data --output runs/l0 --set level_weights_end=[1] "
         "--set model.dim=128", "annealed to level 0, a wider model"),
        ("icpc train --nproc-per-node 1 --data runs/data --output runs/icpc --resume", "continue on 1 rank"),
    ],
    "evaluate": [
        ("icpc evaluate --checkpoint runs/icpc/last.pt", "report in runs/icpc/eval"),
        ("icpc evaluate --checkpoint runs/icpc/last.pt --strategy corner --output runs/icpc/eval-corner "
         "--set limit=1000", "another position strategy, 1,000 samples"),
    ],
    "calibrate": [
        ("icpc calibrate --checkpoint runs/icpc/last.pt", "runs/icpc/thresholds.json"),
        ("icpc calibrate --checkpoint runs/icpc/last.pt --epsilon 0.02 --delta 0.05 --cost tokens "
         "--set grid=[0.5,0.7,0.9]", "at most 2 points lost, with 95% probability; token cost"),
    ],
    "serve": [
        ("icpc serve --checkpoint runs/icpc/last.pt", "http://127.0.0.1:8000/v1/predict"),
        ("icpc serve --checkpoint runs/icpc/last.pt --port 8001 --set max_inflight=64 --set classifier_replicas=2",
         "more load, two model replicas"),
    ],
    "demo": [
        ("icpc demo", "image, in runs/demo"),
        ("icpc demo --modality audio --workdir runs/demo-audio", "spoken digits"),
    ],
    "datasets": [
        ("icpc datasets fashion-mnist --output data/fmnist --train 4000 --test 2000", "PNGs in ImageFolder layout"),
    ],
}

# The --set example each subcommand's --set help shows: a key of that command's own config.
SET_EXAMPLES = {
    "compress": "image.sides=28,20,12",
    "train": "model.dim=128",
    "evaluate": "limit=1000",
    "calibrate": "check_split=val",
    "serve": "max_inflight=64",
}


def set_help(command: str) -> str:
    return (f"override any config field, e.g. --set {SET_EXAMPLES[command]} (repeatable; unknown keys are errors; "
            f"--print-config lists every field)")


def epilog(command: str) -> str:
    lines = ["examples:"]
    for line, what in EXAMPLES[command]:
        lines += [f"  {line}", f"      {what}"]
    return "\n".join(lines)
