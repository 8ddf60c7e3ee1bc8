#!/usr/bin/env bash
# Training burst (≤ 9 min on one H100/H200): the `small` profile's codec at every rate point of params.yaml,
# trained on the bundle's photos, scored on Kodak (bpp/PSNR, real entropy coding) -> $OUT (default ./out):
# gpu_burst.json and packages/<rate>/ (≤ 16 MiB a file). Same environment handling as gpu_check.sh.
set -euo pipefail
source "$(dirname "$0")/_gpu_env.sh"
first_dir PDC_TRAIN "*.jpg" "$BUNDLE/train" ../shared/data/bsds500/train
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
timeout 540 "$PY" benchmarks/gpu_burst.py --kodak "$PDC_KODAK" --train "$PDC_TRAIN" --out "${OUT:-out}" "$@"
