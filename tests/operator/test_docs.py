"""Docs that are generated must not go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_api_reference_matches_the_crds():
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_api_reference.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    lines = (REPO / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text().splitlines()
