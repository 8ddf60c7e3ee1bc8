# Sourced by gpu_check.sh and gpu_burst.sh: cd to the repository, pick the python (PDC_PYTHON, else .venv,
# else python3), make the GPU path importable and find the photos. A lent GPU machine reaches no package
# index: what its python lacks is installed from the wheel bundle (benchmarks/gpu_bundle.py, `make
# gpu-bundle`, built where PyPI is reachable) with pip --no-index --no-deps --target.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=$(command -v "${PDC_PYTHON:-.venv/bin/python}" || command -v python3)
BUNDLE=${PDC_GPU_BUNDLE:-gpu_bundle}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PDC_NO_PROGRESS=1
NEEDS="import torch, compressai, diffusers, pydantic, pytorch_msssim, lpips, webdataset, pdc.models.package"
if ! "$PY" -c "$NEEDS" 2>/dev/null; then
  if ls "$BUNDLE"/wheels/*.whl >/dev/null 2>&1; then
    SITE=$(cd "$BUNDLE" && pwd)/site
    if ! test -f "$SITE/.installed"; then
      echo "installing $BUNDLE/wheels into $SITE (no index, no deps)" >&2
      rm -rf "$SITE"
      PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "$BUNDLE"/wheels/*.whl
      touch "$SITE/.installed"
    fi
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"
  fi
  if ! err=$("$PY" -c "$NEEDS" 2>&1); then
    echo "$0: $PY cannot import the GPU path: $(tail -n 1 <<<"$err")" >&2
    echo "  without a package index, build the wheel bundle where PyPI is reachable (make gpu-bundle, or" >&2
    echo "  benchmarks/gpu_bundle.py --python-version X.Y for this python) and bring $BUNDLE/ along" >&2
    exit 2
  fi
fi
# first_dir VAR PATTERN DIR...: VAR = the first DIR holding a file named PATTERN (VAR's own value, if set,
# is the only DIR tried)
first_dir() {
  local var=$1 pattern=$2; shift 2
  test -z "${!var:-}" || set -- "${!var}"
  for d in "$@"; do compgen -G "$d/$pattern" >/dev/null && { printf -v "$var" %s "$d"; return; }; done
  echo "$0: no $pattern photos in $* (set $var=DIR, or build the bundle: make gpu-bundle)" >&2
  exit 2
}
first_dir PDC_KODAK "kodim*.png" "$BUNDLE/kodak" ../shared/data/kodak
