# torch and peft are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Trainer room: a leaner forward for plain LoRA linear layers while the loop trains (touches no weights).

peft's ``lora.Linear.forward`` handles every case (several adapters, mixed batches, DoRA, merging, dtype
casts) in Python on every call, then adds ``lora_B(lora_A(x)) * scaling`` in three more ops over the
activations. For the one case a training run has (one active adapter, plain LoRA, no dropout) the same
sum is ``addmm(x W^T + b, x A^T, (scaling B)^T)``: the scaling moves onto the small B matrix and the
addition into the matmul, so each layer runs three kernels forward instead of five, and autograd keeps
fewer nodes. On a small model, where a step is mostly such small ops, this is a visible share of the time.

Layers in any other state keep peft's forward; `enabled` restores peft's forward on exit, so evaluation
after training, export and generation run peft's code unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def _lean_forward(layer: Any, adapter: str) -> Any:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or layer.disable_adapters or layer.merged:  # not the training call: peft knows best
            return type(layer).forward(layer, x, *args, **kwargs)  # type: ignore[no-any-return]
        # Weights are looked up per call: FSDP swaps sharded and gathered parameters in and out.
        base, b = layer.base_layer, layer.lora_B[adapter].weight
        h = F.linear(x, base.weight, base.bias)
        z = F.linear(x, layer.lora_A[adapter].weight)
        out = torch.addmm(h.reshape(-1, h.shape[-1]), z.reshape(-1, z.shape[-1]), (b * layer.scaling[adapter]).t())
        return out.view(h.shape)

    return forward


def lean_layers(model: Any) -> list[tuple[Any, str]]:
    """(layer, adapter) of every plain LoRA linear layer with exactly one active adapter and no dropout."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return []
    found = []
    for module in model.modules():
        if type(module) is not Linear or module.merged or module.fan_in_fan_out:
            continue
        active = list(module.active_adapters)
        if len(active) != 1 or active[0] not in module.lora_A or active[0] in module.lora_variant:
            continue
        if not isinstance(module.lora_dropout[active[0]], torch.nn.Identity):
            continue
        if not isinstance(module.base_layer, torch.nn.Linear):
            continue
        found.append((module, active[0]))
    return found


@contextlib.contextmanager
def enabled(model: Any) -> Iterator[int]:
    """Plain LoRA layers run the lean forward inside the block; yields how many were switched."""
    layers = lean_layers(model)
    for layer, adapter in layers:
        layer.forward = _lean_forward(layer, adapter)
    try:
        yield len(layers)
    finally:
        for layer, _ in layers:
            del layer.forward  # the instance attribute: the class's (peft's) forward again
