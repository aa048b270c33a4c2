"""Serving fixtures: the tiny model and a LoRA adapter for it, built once per session, locally."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("cache") / "tiny-model")


@pytest.fixture(scope="session")
def lora_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter as the trainer would export it (adapter_config.json + weights), untrained.

    init_lora_weights=False makes B non-zero, so the adapter really changes the model's output.
    """
    import peft
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM, r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft.get_peft_model(base, config).save_pretrained(out)
    return out
