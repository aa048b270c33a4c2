"""CUDA paths (QLoRA via bitsandbytes, bf16, flash-attn packing); skipped, never faked, without them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kubetune_trainer.recipe import run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (extra: qlora)")
def test_qlora_trains_on_gpu(write_spec, tmp_path):
    spec = write_spec(
        {"method": "qlora", "quantization": {"bits": 4}, "training": {"precision": "bf16", "maxSteps": 5}}
    )
    outcome = run(str(spec), str(tmp_path / "out"))
    assert outcome["phase"] == "Succeeded"
    assert (tmp_path / "out" / "artifact" / "adapter_model.safetensors").exists()


def test_lora_bf16_on_gpu(write_spec, tmp_path):
    spec = write_spec({"training": {"precision": "bf16", "maxSteps": 5}})
    assert run(str(spec), str(tmp_path / "out"))["phase"] == "Succeeded"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn (varlen packing)")
def test_flash_attention_packing_matches_examples_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.loss import token_losses
    from kubetune_trainer.packing import collate, pack, tokenize_pair

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation="flash_attention_2", dtype=torch.bfloat16
    ).to("cuda")
    ex = [tokenize_pair("", text, tok, 64, prompt_loss=True) for text in ("a b c d", "orb is a training run", "e")]

    def losses(rows):
        with torch.no_grad():
            return token_losses(model, {k: v.cuda() for k, v in collate(rows, tok.pad_token_id).items()})

    order = sorted(range(len(ex)), key=lambda i: -len(ex[i]["input_ids"]))
    alone = torch.cat([losses([ex[i]]) for i in order])
    torch.testing.assert_close(losses(pack(ex, 256)), alone, atol=2e-2, rtol=2e-2)  # bf16 kernels


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_process_per_gpu_with_nccl(write_spec, tmp_path, strategy):
    """No processesPerNode: the trainer counts the GPUs and relaunches itself under torchrun."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spec = write_spec({"training": {"precision": "bf16", "maxSteps": 4, "distributed": {"strategy": strategy}}})
    env = dict(os.environ, KUBETUNE_METRICS_PORT="0", PYTHONPATH=f"{repo / 'trainer'}{os.pathsep}{repo / 'api'}")
    cmd = [sys.executable, "-m", "kubetune_trainer", "train", "--spec", str(spec), "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["phase"] == "Succeeded" and result["worldSize"] == torch.cuda.device_count()
