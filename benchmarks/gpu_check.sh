#!/usr/bin/env bash
# GPU check (about 5 min on one H100; budget 8): `paper`-profile training throughput per stage with AMP
# off/on, Kodak decode time at K = 20, peak GPU memory -> JSON ($OUT/gpu_check.json, else ./gpu_check.json).
# On a machine without a package index: build gpu_bundle/ here first (make gpu-bundle) and carry it along;
# benchmarks/_gpu_env.sh installs its wheels when the imports fail.
set -euo pipefail
source "$(dirname "$0")/_gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
timeout 480 "$PY" benchmarks/gpu_check.py --kodak "$PDC_KODAK" --json "${OUT:-.}/gpu_check.json" "$@"
