"""Cross-entropy on target tokens only, computing LM-head logits just for those positions (in chunks where
fused_head.py may take over the head's projection)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F

from kubetune_trainer import fused_head
from kubetune_trainer.packing import IGNORE, batch_indices, collate


def token_losses(model: Any, batch: dict[str, torch.Tensor], prompt_learning: bool = False) -> torch.Tensor:
    """Per-target-token loss, in row-major order of the target positions.

    Labels are pre-shifted (see packing.py). For plain and LoRA/IA3 models ``logits_to_keep`` takes a
    boolean mask, so the (large) vocabulary projection runs only where a label exists. Prompt-learning
    models prepend virtual tokens, so they return full logits; we keep the last ``L`` positions. Where the
    head is a plain projection (fused_head.plain_head), the model returns the kept hidden states instead
    and fused_head.linear_cross_entropy projects them chunk by chunk.
    """
    labels = batch["labels"]
    keep = labels != IGNORE
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    head = None if prompt_learning else fused_head.plain_head(model)
    if head is not None:
        with fused_head.bypassed(head):
            hidden = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        return fused_head.linear_cross_entropy(hidden, head.weight, head.bias, labels[keep])
    if prompt_learning:
        logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1] :][keep]
    else:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(logits.float(), labels[keep], reduction="none")


@torch.no_grad()
def mean_loss(
    model: Any,
    rows: list[dict[str, list[int]]],
    batch_size: int,
    pad_id: int,
    device: str,
    autocast: Callable[[], AbstractContextManager[Any]],
    prompt_learning: bool = False,
) -> float:
    """Token-weighted mean loss over ``rows`` (perplexity is its exp).

    Batches group rows of similar length (less padding); a token-weighted mean does not depend on order.
    """
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for group in batch_indices(rows, batch_size):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in group], pad_id).items()}
        with autocast():
            losses = token_losses(model, batch, prompt_learning)
        total += losses.sum()  # on the device: no sync per batch
        count += losses.numel()
    model.train(was_training)
    return total.item() / max(count, 1)
