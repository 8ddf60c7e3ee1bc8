"""benchmarks/bench_scaling.py runs every configuration for real: each trains its steps (none resumes another's
finished run from Ray Train's storage, which the stage and rate point alone would let it do)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_configuration_of_every_round_trains(tmp_path):
    out = tmp_path / "scaling.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scaling.py"), "--rounds", "2", "--steps", "3",
                        "--batch", "2", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rounds = json.loads(out.read_text())["rounds"]
    assert set(rounds) == {"1 worker × 1 CPU", "1 worker × 2 CPUs", "2 workers × 1 CPU"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in rounds.values())
