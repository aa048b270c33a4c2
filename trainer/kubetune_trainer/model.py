# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Load the base model and tokenizer, and wrap the model for the chosen fine-tuning method."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from kubetune_trainer import uris
from kubetune_trainer.config import ConfigError, JobConfig


def resolve_model_source(cfg: JobConfig) -> str:
    """A local directory or a hub id that ``from_pretrained`` understands."""
    b = cfg.base_model
    if b.name:
        return b.name
    assert b.uri is not None
    kind = uris.scheme(b.uri)
    if kind == "hf":
        return str(uris.hf_local_copy(b.uri) or b.uri.removeprefix("hf://"))
    if kind in ("file", "pvc"):
        path = uris.local_path(b.uri)
        if not path.is_dir():
            raise ConfigError(f"spec.baseModel.uri: {b.uri} -> {path} is not a directory")
        return str(path)
    try:
        return str(uris.fetch_remote(b.uri, uris.cache_dir() / "models"))
    except OSError as e:
        raise ConfigError(f"spec.baseModel.uri: {e}") from e


def _hub_kwargs(cfg: JobConfig, token: str | None) -> dict[str, Any]:
    return {"revision": cfg.base_model.revision, "trust_remote_code": cfg.base_model.trust_remote_code, "token": token}


def load_tokenizer(source: str, cfg: JobConfig, token: str | None = None) -> Any:
    """``token``: the hub token (`TrainerEnv.hf_token`) for gated models; None for public or local ones."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **_hub_kwargs(cfg, token))
    if tokenizer.pad_token_id is None:
        # Padding positions are never attended to nor learned, so any id works; eos is always there.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attn_implementation(device: str) -> str:
    """flash-attn on CUDA when installed (variable-length packed rows), else PyTorch sdpa."""
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(source: str, cfg: JobConfig, device: str, dtype: Any, token: str | None = None) -> Any:
    """The base model on ``device``. ``dtype`` is the storage dtype of frozen weights."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation(device)}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        q = cfg.quantization
        compute = getattr(torch, q.compute_dtype)
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q.quant_type,
                bnb_4bit_use_double_quant=q.double_quant,
                bnb_4bit_compute_dtype=compute,
            )
            if q.bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # this rank's GPU under torchrun
    model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs, **_hub_kwargs(cfg, token))
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False  # training; generation turns it back on explicitly
    return model


def apply_method(
    model: Any, cfg: JobConfig, gradient_checkpointing: bool = False, init_adapter: Path | None = None
) -> Any:
    """Wrap ``model`` for ``cfg.method``; afterwards exactly the trainable weights require grad.

    ``init_adapter``: a peft adapter directory (spec.initFrom, checked by `init_from.check_method`)
    loaded as trainable instead of a freshly initialised adapter of the method."""
    import peft

    method = cfg.policy_method  # dpo/orpo train a LoRA adapter or every weight (spec.preference.policy)
    if gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs, so no enable_input_require_grads hack.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "qlora":
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if init_adapter is not None:
        return _load_trainable_adapter(model, init_adapter)
    task = peft.TaskType.CAUSAL_LM
    if method in ("lora", "qlora"):
        lo = cfg.lora
        targets = lo.target_modules
        peft_config: Any = peft.LoraConfig(
            task_type=task,
            r=lo.r,
            lora_alpha=lo.scaling,  # type: ignore[arg-type]  # peft annotates int; floats work
            lora_dropout=lo.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
        )
    elif method == "ia3":
        peft_config = peft.IA3Config(task_type=task)  # peft knows each architecture's k/v/down projections
    elif method == "prefix":
        peft_config = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens)
    elif method == "prompt":
        peft_config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens)
    else:
        raise ValueError(f"unknown method {method}")
    return peft.get_peft_model(model, peft_config)


def uses_prompt_learning(method: str) -> bool:
    """Prefix / prompt tuning prepend virtual tokens, so rows cannot be packed by position ids."""
    return method in ("prefix", "prompt")


def _load_trainable_adapter(model: Any, path: Path) -> Any:
    """The saved adapter, its weights trainable. peft refuses ``is_trainable`` for prompt learning (prefix,
    prompt) in ``from_pretrained``: those are rebuilt from their saved config and their weights loaded in."""
    import peft

    config = peft.PeftConfig.from_pretrained(str(path))
    if not config.is_prompt_learning:
        return peft.PeftModel.from_pretrained(model, str(path), is_trainable=True)
    config.inference_mode = False
    wrapped = peft.get_peft_model(model, config)
    peft.set_peft_model_state_dict(wrapped, peft.load_peft_weights(str(path), device=str(model.device)))
    return wrapped
