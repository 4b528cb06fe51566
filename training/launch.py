"""Starting ranks: ``icpc train --nproc-per-node N`` re-runs itself under torchrun on this machine."""

from __future__ import annotations

import os
import subprocess
import sys


def launch_torchrun(nproc: int, train_argv: list[str]) -> int:
    """Re-run ``icpc train ARGS`` under torchrun with ``nproc`` local processes (rendezvous on 127.0.0.1)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "icpc.cli", *train_argv]
    print("launching:", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    return subprocess.call(cmd, env=env)


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node N`` (the ranks must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc-per-node":
            skip = True
        elif not a.startswith("--nproc-per-node="):
            out.append(a)
    return out
