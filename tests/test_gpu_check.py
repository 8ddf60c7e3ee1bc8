"""benchmarks/gpu_check.py stays runnable between GPU loans: a CPU smoke run of the tiny profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_writes_its_json_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--profile",
                        "tiny", "--train-steps", "1", "--steps", "2", "--repeats", "1", "--json", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PDC_NO_PROGRESS": "1"},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    for precision in ("fp32", "bf16"):
        assert set(res["training"][precision]) == {"codec", "diffusion", "privileged"}
        assert res["training"][precision]["diffusion"]["precision"] == precision
        assert res["training"][precision]["codec"]["steps_per_s"] > 0
    assert set(res["decode"]) == {"codec@0", "e2e@0", "diffusion@2", "corrdiff@2"}
    assert res["decode_matches_encoder"] is True
