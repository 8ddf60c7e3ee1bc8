#!/usr/bin/env bash
# GPU check (about 5 min on one H100; budget 8): `paper`-profile training throughput per stage with AMP
# off/on, Kodak decode time at K = 20, peak GPU memory -> JSON ($OUT/gpu_check.json, else ./gpu_check.json).
# Uses .venv if present, else the python on PATH (a lent GPU machine has no internet to install from).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
test -x "$PY" || PY=$(command -v python3)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PDC_NO_PROGRESS=1
"$PY" -c "import torch, compressai, diffusers" 2>/dev/null || {
  echo "gpu_check: $PY lacks torch/compressai/diffusers; run 'make install' first" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
timeout 480 "$PY" benchmarks/gpu_check.py --json "${OUT:-.}/gpu_check.json" "$@"
