"""The benchmarks' quick mode runs to the end and prints each benchmark's line of ratios (no thresholds here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_complete_and_report():
    result = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finals = result.stdout.strip().splitlines()[-4:]
    for name in ("trainer: tokens/s x", "lora_overhead: train step x", "learns: exact match base"):
        assert any(line.startswith(name) for line in finals), finals
