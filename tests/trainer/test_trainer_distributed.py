"""Data parallelism: 2 CPU processes (gloo) under torchrun train like 1 process with 2x accumulation."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_trainer.recipe import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def trainer_env() -> dict[str, str]:
    """Trainer subprocesses: no metrics server, one thread per rank, this checkout's package."""
    return dict(
        os.environ,
        KUBETUNE_METRICS_PORT="0",
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO / 'trainer'}{os.pathsep}{REPO / 'api'}",
    )


def step_losses(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"step \d+/\d+ epoch \S+ loss (\S+)", text)]


def test_two_gloo_ranks_match_one_process_with_accumulation(write_spec, tmp_path, caplog):
    training = {"maxSteps": 4, "batchSize": 4, "loggingSteps": 1, "evalSteps": 4}
    ddp_spec = write_spec({"training": {**training, "gradientAccumulationSteps": 1}}, name="ddp.yaml")
    one_spec = write_spec({"training": {**training, "gradientAccumulationSteps": 2}}, name="one.yaml")

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "kubetune_trainer", "train", "--spec", str(ddp_spec), "--output", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["phase"] == "Succeeded" and result["worldSize"] == 2 and result["steps"] == 4
    ddp_losses = step_losses(proc.stderr)
    assert len(ddp_losses) == 4, proc.stderr[-3000:]  # rank 0 alone reports progress

    with caplog.at_level(logging.INFO, logger="kubetune_trainer"):
        single = run(str(one_spec), str(tmp_path / "one"))
    one_losses = step_losses(caplog.text)
    # Step 1 sees identical weights and rows, so the loss agrees to float precision; later steps
    # may drift by Adam's sign-like first updates of near-zero gradients, so only loosely.
    assert ddp_losses[0] == pytest.approx(one_losses[0], rel=1e-5)
    assert ddp_losses[-1] == pytest.approx(one_losses[-1], rel=0.05)
    assert result["metrics"]["evalLoss"] == pytest.approx(single["metrics"]["evalLoss"], rel=0.05)


def trainer_cli(spec: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The pod's own command line: the trainer itself decides to relaunch under torchrun."""
    cmd = [sys.executable, "-m", "kubetune_trainer", "train", "--spec", str(spec), "--output", str(out)]
    return subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=400)


def test_fsdp_relaunches_itself_shards_and_resumes_like_one_process(write_spec, tmp_path, caplog):
    """processesPerNode 2 + fsdp: the plain trainer command becomes torchrun with 2 gloo ranks whose
    weights are sharded (FSDP2). It checkpoints whole tensors, resumes from them, and trains, evaluates
    and exports what one process with 2x accumulation does."""
    import torch
    from safetensors.torch import load_file

    # A constant schedule, so that stopping at 4 steps and going on to 6 changes no learning rate.
    training = {"batchSize": 4, "loggingSteps": 1, "evalSteps": 2, "checkpointSteps": 2}
    training |= {"scheduler": "constant", "warmupRatio": 0.0}
    fsdp = {"distributed": {"strategy": "fsdp", "processesPerNode": 2}, "gradientAccumulationSteps": 1}
    # Two gloo ranks on CPU: a spec without GPUs (the API refuses more processes than GPUs requested).
    lora = {"lora": {"r": 16, "dropout": 0.0}, "resources": {"gpus": 0}}
    first = write_spec({**lora, "training": {**training, **fsdp, "maxSteps": 4}}, name="fsdp4.yaml")
    proc = trainer_cli(first, tmp_path / "fsdp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "launching 2 training processes under torchrun" in proc.stderr
    fsdp_losses = step_losses(proc.stderr)
    assert len(fsdp_losses) == 4, proc.stderr[-3000:]  # rank 0 alone reports progress
    # Checkpoints hold whole parameters, not one rank's shard.
    saved = torch.load(tmp_path / "fsdp" / "checkpoints" / "step-4" / "trainable.pt", weights_only=True)
    a_name = next(n for n in saved if "layers.0.self_attn.q_proj.lora_A" in n)
    assert tuple(saved[a_name].shape) == (16, 64), {n: tuple(t.shape) for n, t in saved.items()}

    # The same job asked for 6 steps resumes from step-4.
    second = write_spec({**lora, "training": {**training, **fsdp, "maxSteps": 6}}, name="fsdp6.yaml")
    proc = trainer_cli(second, tmp_path / "fsdp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stderr and "step-4" in proc.stderr
    result = json.loads((tmp_path / "fsdp" / "result.json").read_text())
    assert result["phase"] == "Succeeded" and result["worldSize"] == 2 and result["steps"] == 6

    one_training = {**training, "maxSteps": 6, "gradientAccumulationSteps": 2}
    one_spec = write_spec({**lora, "training": one_training}, name="one.yaml")
    with caplog.at_level(logging.INFO, logger="kubetune_trainer"):
        single = run(str(one_spec), str(tmp_path / "one"))
    assert result["metrics"]["evalLoss"] == pytest.approx(single["metrics"]["evalLoss"], rel=0.05)
    # Step 1 sees identical weights and rows: the same loss to float precision (later steps drift a
    # little: Adam's first updates of near-zero gradients are sign-like).
    assert fsdp_losses[0] == pytest.approx(step_losses(caplog.text)[0], rel=1e-5)
    # The exported adapter is whole and close to the single-process one (same data, same steps).
    # lora_B starts at zero, so its norm is how far training moved it. (Without dropout: each rank
    # draws its own masks, so with dropout no two layouts of the same step agree.)
    ours = load_file(tmp_path / "fsdp" / "artifact" / "adapter_model.safetensors")
    ref = load_file(tmp_path / "one" / "artifact" / "adapter_model.safetensors")
    assert ours.keys() == ref.keys() and ours
    for name, tensor in ref.items():
        assert ours[name].shape == tensor.shape, name
        if "lora_B" in name:
            assert (ours[name] - tensor).norm() < 0.1 * tensor.norm(), name
