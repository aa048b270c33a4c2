"""A run killed mid-training (SIGTERM = preemption, SIGKILL = node loss) resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune_trainer import checkpoint
from kubetune_trainer.recipe import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SPEC = {"training": {"maxSteps": 60, "checkpointSteps": 5, "loggingSteps": 5, "evalSteps": 30}}


def start(spec: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, KUBETUNE_METRICS_PORT="0", PYTHONPATH=f"{REPO / 'trainer'}{os.pathsep}{REPO / 'api'}")
    cmd = [sys.executable, "-m", "kubetune_trainer", "train", "--spec", str(spec), "--output", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint.complete(ckpt_dir):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "artifact" / "adapter_model.safetensors")


def test_sigterm_checkpoints_and_the_retry_resumes_to_the_same_weights(write_spec, tmp_path):
    spec = write_spec(SPEC)
    out = tmp_path / "interrupted"
    proc = start(spec, out)
    wait_for_checkpoint(proc, out / "checkpoints")
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, log
    stopped_at = json.loads((checkpoint.complete(out / "checkpoints")[-1] / "state.json").read_text())["step"]
    assert 5 <= stopped_at < 60, log
    assert not (out / "result.json").exists()

    retry = start(spec, out)
    log = retry.communicate(timeout=300)[0]
    assert retry.returncode == 0, log
    assert f"resumed from step {stopped_at}/60 ({out / 'checkpoints' / f'step-{stopped_at}'})" in log
    assert json.loads((out / "result.json").read_text())["steps"] == 60

    # The same job without interruption ends with the same adapter: the resume replays the data order.
    straight = tmp_path / "straight"
    run(str(spec), str(straight))
    resumed, reference = adapter(out), adapter(straight)
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-4, rtol=1e-3)


def test_sigkill_leaves_only_complete_checkpoints_and_the_retry_resumes(write_spec, tmp_path):
    spec = write_spec(SPEC)
    out = tmp_path / "killed"
    proc = start(spec, out)
    wait_for_checkpoint(proc, out / "checkpoints")
    proc.kill()
    proc.communicate(timeout=60)
    found = checkpoint.complete(out / "checkpoints")
    assert found and all((p / "trainable.pt").exists() and (p / "optimizer.pt").exists() for p in found)
    # A half-written checkpoint (as after a kill during a save) must be ignored and cleaned up.
    (out / "checkpoints" / ".tmp-step-999-1").mkdir()

    retry = start(spec, out)
    log = retry.communicate(timeout=300)[0]
    assert retry.returncode == 0, log
    assert "resumed from" in log
    assert not (out / "checkpoints" / ".tmp-step-999-1").exists()
    assert json.loads((out / "result.json").read_text())["phase"] == "Succeeded"
