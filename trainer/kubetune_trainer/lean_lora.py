# torch and peft are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Trainer room: a leaner forward for plain LoRA linear layers while the loop trains (touches no weights).

peft's ``lora.Linear.forward`` handles every case (several adapters, mixed batches, DoRA, merging, dtype
casts) in Python on every call, then adds ``lora_B(lora_A(x)) * scaling`` in three more ops over the
activations. For the one case a training run has (one active adapter, plain LoRA, no dropout) the same
sum is ``addmm(x W^T + b, x A^T, (scaling B)^T)``: the scaling moves onto the small B matrix and the
addition into the matmul, so each layer runs three kernels forward instead of five, and autograd keeps
fewer nodes. On a small model, where a step is mostly such small ops, this is a visible share of the time.

Where the layer is small against the rank (``in * out <= 3 r (in + out)``, i.e. hidden sizes up to about
6 r: tiny models, not real ones), the merged weight is cheaper still: ``x (W + scaling B A)^T`` is one
matmul over the activations forward, and backward its weight gradient (``in * out`` multiply-adds per
token) costs no more than the adapter's four thin ones (``2 r (in + out)``) plus the forward pair saved.
The gradients reach A and B through the small ``B A`` product; the sum is the same, rounded differently.

Layers in any other state keep peft's forward; `enabled` restores peft's forward on exit, so evaluation
after training, export and generation run peft's code unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def merges(layer: Any, adapter: str) -> bool:
    """Whether ``x (W + s B A)^T`` takes fewer multiply-adds per token than ``x W^T + s (x A^T) B^T``,
    forward and backward together (see the module docstring).

    >>> from types import SimpleNamespace as NS
    >>> merges(NS(in_features=64, out_features=128, r={"a": 16}), "a")  # the tiny test model
    True
    >>> merges(NS(in_features=4096, out_features=4096, r={"a": 16}), "a")  # a 7B model's projection
    False
    """
    n_in, n_out, rank = layer.in_features, layer.out_features, layer.r[adapter]
    return bool(n_in * n_out <= 3 * rank * (n_in + n_out))


def _lean_forward(layer: Any, adapter: str) -> Any:
    merged_weight = merges(layer, adapter)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or layer.disable_adapters or layer.merged:  # not the training call: peft knows best
            return type(layer).forward(layer, x, *args, **kwargs)  # type: ignore[no-any-return]
        # Weights are looked up per call: FSDP swaps sharded and gathered parameters in and out.
        base, b = layer.base_layer, layer.lora_B[adapter].weight
        if merged_weight:
            weight = torch.addmm(base.weight, b, layer.lora_A[adapter].weight, alpha=layer.scaling[adapter])
            return F.linear(x, weight, base.bias)
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
