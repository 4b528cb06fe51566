#!/usr/bin/env bash
# GPU check in one device call (under 9 minutes on one H200 with 16 cores): bench/gpu_check.py.
#
# Prepare once here (the machine there has no network): copy Fashion-MNIST's IDX files into the
# checkout, ignored by git, and carry them:
#   mkdir -p .gpudata && cp /usr/share/datasets/fashion-mnist/*.gz .gpudata/ && echo /.gpudata/ >> .git/info/exclude
# Then, with the device tool:  run(command="bash bench/gpu_check.sh", carry=[".gpudata"], timeout_s=570)
# The machine has torch, numpy, pyarrow, pillow and tensorboard; icpc is installed from this checkout
# without its other dependencies (training needs neither Ray nor webdataset).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | grep -v "^WARNING" || true
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
python3 bench/gpu_check.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log" | grep -E "^GPU_CHECK|Error|error" || true
