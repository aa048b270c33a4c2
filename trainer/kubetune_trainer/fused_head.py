# torch and transformers are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Trainer room: the LM head and cross-entropy as one chunked step, so the logits never exist whole.

The plain loss projects every target position onto the vocabulary, keeps those logits, a float copy and
their log-softmax for backward: ``targets x vocab`` values three times over, about 5 GB for 4,096
targets of a 128k vocabulary under bf16 (bench/bench_fused_head.py measured 6,024 MB at the peak in
fp32). Here the projection runs over chunks of targets (``CHUNK_FLOATS`` logits at a time), and while a
chunk's logits are at hand the gradient with respect to the hidden states is computed too (``softmax -
onehot``, times the head's weight, as Liger's fused linear cross-entropy does on GPUs), so nothing of
the vocabulary's size is kept for backward. Backward only scales those rows by the incoming per-token
gradient. Where the head itself trains (full fine-tuning) its weight gradient depends on that incoming
gradient, so backward computes it chunk by chunk again from the saved hidden states.

Only for models whose causal-LM forward returns ``lm_head(hidden)`` unchanged (`MODEL_TYPES`; Granite
divides, Gemma 2 soft-caps, Cohere scales the logits, and those keep the plain path), with a plain
``nn.Linear`` head, and not under FSDP (whose sharded head weight exists whole only inside its forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

# transformers model types whose ForCausalLM forward is `logits = self.lm_head(hidden_states)`, nothing after.
MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma"})
# Logits per chunk: 128 MB in fp32, and as much again for their softmax. Each chunk reads the head's whole
# weight twice (forward and the hidden-state gradient): with 8M, chunks of 65 rows at a 128k vocabulary
# ran 1.11-1.19x the plain loss's time, with 32M 0.72-0.93x (bench/bench_fused_head.py).
CHUNK_FLOATS = 1 << 25


def plain_head(model: Any) -> torch.nn.Linear | None:
    """The LM head of ``model`` (a DDP wrapper, a peft model or a transformers one) when the loss may take
    over its projection, else None.

    >>> from kubetune_trainer.tiny_model import build_model, build_tokenizer
    >>> type(plain_head(build_model(build_tokenizer(["a b c"] * 4, vocab_size=300)))).__name__
    'Linear'
    """
    from torch.distributed.fsdp import FSDPModule

    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    if getattr(getattr(inner, "config", None), "model_type", None) not in MODEL_TYPES or isinstance(inner, FSDPModule):
        return None
    head = inner.get_output_embeddings()
    return head if type(head) is torch.nn.Linear else None


@contextlib.contextmanager
def bypassed(head: torch.nn.Linear) -> Iterator[None]:
    """Inside the block the head returns its input, so the model's ``logits`` are the final hidden states."""
    head.forward = lambda hidden: hidden  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del head.forward  # the instance attribute: nn.Linear's forward again


def _chunks(n: int, vocab: int) -> list[slice]:
    rows = max(1, CHUNK_FLOATS // vocab)
    return [slice(start, start + rows) for start in range(0, n, rows)]


def _probs_and_losses(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of the logits and each row's ``-log p[label]``, with one pass of exp over the logits.

    ``log_softmax`` then ``exp`` would take two (exp is most of their cost on CPU). The log-sum-exp comes
    back from the softmax's largest value instead: ``p_max = exp(max - lse)``, and ``p_max >= 1 / vocab``,
    so its log is exact where ``log p[label]`` itself could underflow.
    """
    logits = F.linear(hidden, weight, bias).float()
    probs = torch.softmax(logits, dim=-1)
    lse = logits.amax(1) - probs.amax(1).log()
    return probs, lse - logits.gather(1, labels[:, None]).squeeze(1)


def _logit_grads(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d(-log p[label]) / d logits = softmax - onehot, computed in place over ``probs``."""
    minus_one = probs.new_full((labels.shape[0], 1), -1.0)
    return probs.scatter_add_(1, labels[:, None], minus_one)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        losses, grad_hidden = [], []
        for part in _chunks(labels.shape[0], weight.shape[0]):
            probs, part_losses = _probs_and_losses(hidden[part], weight, bias, labels[part])
            losses.append(part_losses)
            if ctx.needs_input_grad[0]:
                grad = _logit_grads(probs, labels[part]).to(weight.dtype) @ weight
                grad_hidden.append(grad.to(hidden.dtype))
        head_trains = ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])
        joined = _joined(grad_hidden) if grad_hidden else None
        ctx.save_for_backward(joined, *((hidden, weight, bias, labels) if head_trains else ()))
        return _joined(losses) if losses else hidden.new_empty(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, *head = ctx.saved_tensors
        scale = grad_losses[:, None]
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        grad_weight = grad_bias = None
        if head:  # the head trains: its gradient, chunk by chunk again, weighted by the incoming gradient
            hidden, weight, bias, labels = head
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
            for part in _chunks(labels.shape[0], weight.shape[0]):
                probs, _ = _probs_and_losses(hidden[part], weight, bias, labels[part])
                g = _logit_grads(probs, labels[part]) * scale[part]
                grad_weight += g.t() @ hidden[part].float()
                if grad_bias is not None:
                    grad_bias += g.sum(0)
            grad_weight = grad_weight.to(weight.dtype)
            grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None and bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # one chunk (a small vocabulary): no copy


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="none")``, chunked.

    >>> h, w, y = torch.randn(5, 4), torch.randn(7, 4), torch.tensor([0, 6, 2, 2, 1])
    >>> plain = F.cross_entropy(F.linear(h, w), y, reduction="none")
    >>> torch.allclose(linear_cross_entropy(h, w, None, y), plain)
    True
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden, weight, bias, labels)  # type: ignore[no-any-return]
    parts = [
        F.cross_entropy(F.linear(hidden[part], weight, bias).float(), labels[part], reduction="none")
        for part in _chunks(labels.shape[0], weight.shape[0])
    ]
    return _joined(parts) if parts else hidden.new_empty(0, dtype=torch.float32)
