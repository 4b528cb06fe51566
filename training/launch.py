"""Starting ranks: ``icpc train --nproc-per-node N`` re-runs itself under torchrun on this machine, supervised.

The launcher owns what it starts: torchrun runs in its own session and gets SIGTERM when the
launcher dies, however it dies (``die_with_parent``), and forwards it to the ranks, which also
die with torchrun. A SIGTERM or Ctrl-C to the launcher is passed to torchrun once; the ranks
finish their step, save a checkpoint and exit, and the launcher exits 0 when they did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from icpc import storage
from icpc.training.supervision import STOPPED_FILE, check_unlocked, die_with_parent


def launch_torchrun(nproc: int, train_argv: list[str], output: str = "") -> int:
    """Run ``icpc train ARGS`` under torchrun with ``nproc`` local processes (rendezvous on 127.0.0.1).

    Returns torchrun's exit code, or 0 when the ranks stopped on request after saving a checkpoint.
    """
    if output:
        check_unlocked(output)  # fail before starting anything; rank 0 holds the real lock
        storage.remove(storage.join(output, STOPPED_FILE))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "icpc.cli", *train_argv]
    print("launching:", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)
    asked = []

    def forward(signum, frame):
        if not asked:  # one SIGTERM is a request; torchrun escalates to SIGKILL after its grace period
            asked.append(signal.Signals(signum).name)
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if asked and output and storage.exists(storage.join(output, STOPPED_FILE)):
        info = json.loads(storage.read_text(storage.join(output, STOPPED_FILE)))
        print(f"stopped on {asked[0]} at epoch {info['epoch'] + 1}, batch {info['batches']}: checkpoint "
              f"{info['checkpoint']}; continue with --resume", flush=True)
        return 0
    return rc


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
