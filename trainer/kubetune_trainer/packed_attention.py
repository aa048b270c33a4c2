# torch and transformers are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Trainer room: attention over one packed row without a varlen kernel (CPU, or CUDA without flash-attn).

A packed row (packing.flatten) holds several examples; its ``position_ids`` restart at 0 where each
begins. flash-attn's varlen kernel attends within each example; sdpa and eager would need a
row x row block mask, whose cost grows with the square of the whole row. Here the row is split at the
restarts and each example gets its own causal sdpa call: attention costs the sum of the examples'
squares, as with padding-free varlen kernels, and the rest of the model (every linear layer) runs
once over all the row's tokens without padding.

Only the training loop turns this on, and only while it trains (`enabled`): a saved or served model
keeps its own attention implementation. Anything that is not one packed row (a padded batch, a mask,
decoding with a cache) goes to transformers' sdpa unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

NAME = "kubetune_packed_sdpa"


def example_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the examples in one packed row, from where its positions restart at 0.

    >>> example_lengths(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    [3, 2, 1]
    """
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], position_ids.shape[1]]
    return [e - s for s, e in zip(starts, ends, strict=True)]


def packed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query/key/value are (batch, heads, length, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (
        attention_mask is None
        and position_ids is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2] > 1  # no cache: a whole row, not a decoding step
    )
    lengths = example_lengths(position_ids) if packed and position_ids is not None else []
    if len(lengths) <= 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    # split, not slices: its backward concatenates the gradients instead of adding zero-padded copies.
    parts = zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), strict=True)
    out = torch.cat(
        [
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in parts
        ],
        dim=2,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa)


@contextlib.contextmanager
def enabled(model: Any) -> Iterator[None]:
    """Packed rows attend per example while the block runs, unless the model has a varlen kernel already."""
    config = model.config
    before = config._attn_implementation
    if before.startswith("flash_attention"):
        yield
        return
    register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
