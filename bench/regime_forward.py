"""The paper's inference regime on this CPU: forward-pass time per level of a ViT-S/16-sized model at 224 px.

    .venv/bin/python bench/regime_forward.py --repeats 5 --output bench/results/serve/regime_forward.json

The built-in transformer at ViT-S/16's size (dim 384, depth 12, heads 6, MLP ratio 4) on an RGB
image ladder of 224, 192, 160, 128, 96 px in 16 px patches (196, 144, 100, 64, 36 tokens), random
weights (time does not depend on them). Per level: the median over ``--repeats`` of the forward
pass per sample at batch 1 and at batch 32, one torch thread (what a Serve model replica uses by
default). With ``--path-ms`` (the request path's CPU per level call measured by bench/load_test.py:
proxy + ingress + handle, ~13 ms on this machine) it prints the bound on a cascade's served speed-up
against level 0 when a share ``--early`` of the requests stops at the most compressed level and
the rest go on to level 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = [224, 192, 160, 128, 96]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed passes per (level, batch); the median is reported")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--path-ms", type=float, default=13.0, help="request-path CPU ms per level call (load test)")
    p.add_argument("--early", type=float, default=0.8, help="share of requests answered at the most compressed level")
    p.add_argument("--output", default="", help="write the results as JSON here")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from icpc.config import ModelConfig
    from icpc.inference.predict import classify
    from icpc.models.registry import build_model
    from icpc.pipeline.modalities.image import ImageConfig, build_spec

    torch.set_num_threads(args.threads)
    spec = build_spec(ImageConfig(sides=SIDES, patch=16, channels=3))
    model = build_model(spec, ModelConfig(dim=384, depth=12, heads=6, mlp_ratio=4.0), 1000).eval()
    rng = np.random.default_rng(0)
    rows = []
    for level, side in enumerate(SIDES):
        n = (side // 16) ** 2
        for batch in (int(b) for b in args.batches.split(",")):
            items = [(rng.integers(0, 256, (n, 16 * 16 * 3), dtype=np.uint8),
                      np.arange(n, dtype=np.int32)) for _ in range(batch)]
            classify(model, spec, level, items)   # warm-up: allocation
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                classify(model, spec, level, items)
                times.append((time.perf_counter() - t0) / batch)
            rows.append({"level": level, "side": side, "tokens": n, "batch": batch,
                         "ms_per_sample": 1000 * statistics.median(times)})
            print(f"level {level} ({side} px, {n} tokens) batch {batch:>3}: {rows[-1]['ms_per_sample']:8.2f} ms/sample",
                  flush=True)
    bound = {}
    for batch in (int(b) for b in args.batches.split(",")):
        fwd = {r["level"]: r["ms_per_sample"] for r in rows if r["batch"] == batch}
        level0 = args.path_ms + fwd[0]
        cascade = args.path_ms + fwd[len(SIDES) - 1] + (1 - args.early) * (args.path_ms + fwd[0])
        bound[batch] = level0 / cascade
        print(f"batch {batch}: level 0 {level0:.1f} ms/request, cascade ({args.early:.0%} at level "
              f"{len(SIDES) - 1}) {cascade:.1f} ms: speed-up bound {bound[batch]:.2f}x", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({
            "command": " ".join([sys.executable, *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
            "loadavg": os.getloadavg(), "threads": args.threads, "rows": rows, "path_ms": args.path_ms,
            "early": args.early, "speedup_bound": bound}, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
