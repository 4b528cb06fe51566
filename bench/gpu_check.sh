#!/usr/bin/env bash
# GPU check in one device call (under 9 minutes on one H200 with 16 cores): bench/gpu_check.py.
#
# Prepare once here (the machine there has no network): copy Fashion-MNIST's IDX files into the
# checkout, ignored by git, and carry them:
#   mkdir -p .gpudata && cp /usr/share/datasets/fashion-mnist/*.gz .gpudata/ && echo /.gpudata/ >> .git/info/exclude
# For the timm model (timm and torchvision are not on that machine), also carry wheels:
#   .venv/bin/pip download -q --no-deps -d .gpudata/wheels timm==1.0.31 safetensors huggingface_hub pyyaml
# (torchvision must match the machine's torch: add the matching wheel, or the timm step is skipped and says so).
# Then, with the device tool:  run(command="bash bench/gpu_check.sh", carry=[".gpudata"], timeout_s=570)
# The machine has torch, numpy, pyarrow, pillow and tensorboard; icpc is installed from this checkout
# without its other dependencies (training needs neither Ray nor webdataset).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | grep -v "^WARNING" || true
if ls .gpudata/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index .gpudata/wheels/*.whl 2>&1 | grep -v "^WARNING" || true
fi
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
python3 bench/gpu_check.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log" | grep -E "^GPU_CHECK|Error|error" || true
