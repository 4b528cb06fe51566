"""Starting an embedded single-machine Ray, retried when a loaded machine outlasts Ray's start-up wait.

Ray 2.60 gives a new node's raylet a fixed 30 s to register with the GCS (``ray/_private/node.py``,
not configurable); at a load average of about 30 on 2 cores that wait runs out and ``ray.init``
raises "The current node timed out during startup". The processes it started are shut down and the
start is tried again, so ``icpc compress``, ``icpc serve`` and the test fixtures survive a busy machine.

Ray also starts its worker processes at nice 15 (``RAY_worker_niceness``), which suits a cluster
node that runs nothing else. An embedded Ray is the user's own job on a machine that runs other
things: beside two CPU-bound processes at nice 0, its workers got about 1/30 of the CPU each, a
teacher model took minutes to load and a Serve deployment did not start in 300 s. Its workers run
at the driver's own priority (nice 0) unless ``RAY_worker_niceness`` is set.
"""

from __future__ import annotations

import os
import time
from typing import Any

STARTUP_TIMEOUT = "timed out during startup"   # the text of Ray's start-up error (no dedicated exception type)
ATTEMPTS = 3                                    # starts tried before the error is passed on
BACKOFF_S = 5.0                                 # pause between attempts, times the attempt number
WORKER_NICENESS = "0"                           # an embedded Ray's workers: the driver's priority (Ray's: 15)


def init_local_ray(attempts: int = ATTEMPTS, **kwargs: Any) -> None:
    """``ray.init(address="local", **kwargs)``: a fresh embedded instance, never a stray cluster in /tmp/ray.

    Only Ray's start-up timeout is retried (after ``ray.shutdown()`` stops what the failed start left
    running); any other error is raised at once.
    """
    import ray

    os.environ.setdefault("RAY_worker_niceness", WORKER_NICENESS)   # read by the workers Ray starts
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this case
            if STARTUP_TIMEOUT not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"Ray did not start within its 30 s (attempt {attempt} of {attempts}; the machine is busy): "
                  f"trying again", flush=True)
            time.sleep(BACKOFF_S * attempt)
