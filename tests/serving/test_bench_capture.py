"""The capture benchmark still runs end to end, tiny (numbers are for humans: no timing is asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_bench_capture_prints_both_ratios_and_captures_every_request(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "bench_capture.py"), "--rounds", "1", "--requests", "5"]
    out = subprocess.run([*cmd, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert re.search(r"P50 ratio on/off: \d+\.\d+x", out.stdout) and re.search(
        r"P99 ratio on/off: \d+\.\d+x", out.stdout
    )
    assert "captured 10 of 10 requests" in out.stdout
