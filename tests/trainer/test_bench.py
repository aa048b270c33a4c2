"""The benchmark still runs end to end (numbers are for humans: no timing is asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_bench_compares_both_sides_on_the_same_tokens(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "bench_trainer.py"), "--smoke", "--threads", "1", "--devices", "cpu"]
    out = subprocess.run([*cmd, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tables = re.split(r"^== ", out.stdout, flags=re.M)[1:]
    assert [t.split(":")[0] for t in tables] == ["lognormal", "heavy"], out.stdout  # both data shapes
    for table in tables:
        assert re.search(r"throughput ratio ours/hf: \d+\.\d+x", table), table
        assert re.search(r"eval loss ours - hf: [+-]\d+\.\d+", table), table
        assert re.search(r"peak RSS ours/hf: \d+\.\d+x", table), table
        steps = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(hf|ours)\s+\d+\s+[\d.]+\s+(\d+)", table, re.M)}
        assert steps["hf"] == steps["ours"] > 0, table  # same optimizer steps on both sides
        pad = float(re.search(r"computed (\d+\.\d+) token positions per real token", table).group(1))
        assert pad > 1.0  # long-tailed lengths: pad-to-longest always wastes something


def test_dpo_bench_runs_both_sides(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "bench_dpo.py"), "--pairs", "32", "--steps", "2", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"throughput ratio ours/trl: \d+\.\d+x", out.stdout), out.stdout
    assert re.search(r"^trl\s+2\s", out.stdout, re.M) and re.search(r"^ours\s+2\s", out.stdout, re.M), out.stdout
