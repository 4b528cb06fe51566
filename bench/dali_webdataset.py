"""Check: NVIDIA DALI's webdataset reader sees one record per input of a schema 3 split, on the CPU alone.

    .venv/bin/pip install nvidia-dali-cuda120 nvidia-nvimgcodec-cu12   # 424 MB; not in CI for its size
    .venv/bin/python bench/dali_webdataset.py --data runs/data --split val

A CPU-only pipeline (``device_id=None``): ``fn.readers.webdataset`` groups each sample's members
(no DALI index files: it indexes the tars itself), ``fn.decoders.image`` decodes level 0 and the
last level on the CPU. Prints the records read against the manifest's count and the shapes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="output folder of icpc compress (an image dataset)")
    p.add_argument("--split", default="val")
    args = p.parse_args()
    from nvidia.dali import fn, pipeline_def, types

    m = json.loads((Path(args.data) / "manifest.json").read_text())
    paths = [str(Path(args.data) / s["name"]) for s in m["shards"] if s["split"] == args.split]
    first, last = m["layout"]["levels"][0]["field"], m["layout"]["levels"][-1]["field"]
    gray = m["spec"]["tokenization"].get("channels") == 1

    @pipeline_def(batch_size=64, num_threads=1, device_id=None)
    def pipe():
        l0, lk, cls = fn.readers.webdataset(paths=paths, ext=[first, last, "cls"], missing_component_behavior="error",
                                            name="reader")
        kind = types.GRAY if gray else types.RGB
        return fn.decoders.image(l0, device="cpu", output_type=kind), fn.decoders.image(lk, device="cpu",
                                                                                        output_type=kind), cls

    pipeline = pipe()
    pipeline.build()
    total = pipeline.epoch_size("reader")
    l0, lk, cls = pipeline.run()
    print(f"DALI: {total} records in {len(paths)} {args.split} shards (manifest: {m['counts'][args.split]}); "
          f"{first} {l0.at(0).shape}, {last} {lk.at(0).shape}, cls {bytes(cls.at(0)).decode()}")


if __name__ == "__main__":
    main()
