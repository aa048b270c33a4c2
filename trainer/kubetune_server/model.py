# torch, transformers and peft are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Load the base model (+ PEFT adapter) once, and generate one request at a time.

One model object serves every request, and ``generate`` is not safe to run concurrently on it (nor
worth it on CPU), so a lock serialises generation; HTTP threads queue on it. Requests naming the base
model run with the adapter disabled, so one process can serve both (as vLLM's LoRA mode does).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_server.protocol import GenerationRequest, RequestError, apply_stop
from kubetune_server.settings import ServerSettings, check_paths
from kubetune_trainer.formatting import default_chat_prompt

log = logging.getLogger("kubetune_server")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    first_token_at: float | None  # time.monotonic() when the first token's logits were ready


class _FirstTokenClock:
    """A logits processor that only notes when it is first called: the prefill is done then.

    A streamer would also see tokens, but generate may defer streamer calls on some devices.
    """

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.at is None:
            self.at = time.monotonic()
        return scores


class LoadedModel:
    def __init__(self, model: Any, tokenizer: Any, device: str, base_name: str, adapter_name: str | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.base_name = base_name
        self.adapter_name = adapter_name
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Served model names; the first is the default when a request names none."""
        return [self.adapter_name, self.base_name] if self.adapter_name else [self.base_name]

    def resolve(self, requested: str | None) -> str:
        if requested is None or requested == "":
            return self.names[0]
        if requested not in self.names:
            raise RequestError(
                f"the model '{requested}' does not exist; this server serves {', '.join(self.names)}",
                status=404,
                param="model",
                code="model_not_found",
            )
        return requested

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The tokenizer's chat template if it has one, else the trainer's plain template (same as training)."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return default_chat_prompt(messages)

    def generate(self, prompt: str, req: GenerationRequest, name: str) -> Generation:
        import torch
        from transformers import LogitsProcessorList

        ids = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        n_prompt = int(ids["input_ids"].shape[1])
        if n_prompt == 0:
            raise RequestError("the prompt encodes to zero tokens", param="prompt")
        clock = _FirstTokenClock()
        kwargs: dict[str, Any] = {
            "max_new_tokens": req.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "logits_processor": LogitsProcessorList([clock]),
        }
        if req.temperature > 0:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p)
        else:  # greedy; top_k=None etc. silence the sampling defaults a generation_config may carry
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            if self.adapter_name and name == self.base_name:
                with self.model.disable_adapter():
                    out = self.model.generate(**ids, **kwargs)
            else:
                out = self.model.generate(**ids, **kwargs)
        new = out[0, n_prompt:].tolist()
        eos = self.tokenizer.eos_token_id
        ended = eos is not None and eos in new
        if ended:
            new = new[: new.index(eos) + 1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = apply_stop(text, req.stop)
        return Generation(text, n_prompt, len(new), "stop" if ended or stopped else "length", clock.at)


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return setting


def load(settings: ServerSettings) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # pod logs are not terminals
    check_paths(settings)
    # A directory, or a hub id that transformers finds in (or downloads into) the HF cache at HF_HOME,
    # as the trainer loads one; HF_HUB_OFFLINE=1 keeps it to the cache.
    model_dir = Path(settings.model)
    source = str(model_dir) if model_dir.is_dir() else settings.model
    hub = {"revision": settings.revision} if settings.revision else {}
    adapter_dir = Path(settings.adapter) if settings.adapter else None
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    started = time.monotonic()
    # The trainer saves the tokenizer beside the adapter (pad token and all); prefer that copy.
    own_tokenizer = adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir if own_tokenizer else source, **hub)
    except OSError as e:
        if model_dir.is_dir() or own_tokenizer:
            raise
        raise RuntimeError(
            f"--model {settings.model}: not a local directory, and {_hub_origin()} lacks it ({e})"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.float32 if device == "cpu" else "auto"
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **hub)
    except OSError as e:
        if model_dir.is_dir():
            raise
        raise RuntimeError(
            f"--model {settings.model}: not a local directory, and {_hub_origin()} lacks it ({e})"
        ) from e
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=settings.adapter_name)
    model.to(device)
    model.eval()
    log.info(
        "loaded %s%s on %s in %.1fs",
        source,
        f" + adapter {adapter_dir} as '{settings.adapter_name}'" if adapter_dir else "",
        device,
        time.monotonic() - started,
    )
    return LoadedModel(
        model, tokenizer, device, settings.served_model_name, settings.adapter_name if adapter_dir else None
    )


def _hub_origin() -> str:
    import os

    from huggingface_hub import constants

    where = f"the Hugging Face cache at {constants.HF_HUB_CACHE}"
    return f"{where} (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else f"the hub or {where}"


def gpu_memory() -> tuple[float, float]:
    """(used, total) bytes of the current CUDA device, as the driver sees it (all processes)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return float(total - free), float(total)
