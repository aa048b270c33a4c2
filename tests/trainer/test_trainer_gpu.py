"""QLoRA needs CUDA + bitsandbytes; skipped (never faked) without them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kubetune_trainer.cli import run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (extra: qlora)"),
]


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
