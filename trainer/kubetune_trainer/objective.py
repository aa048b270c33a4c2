# torch is partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""What one optimizer step holds and minimises: an epoch's micro-batches, the step plan, the `Objective`.

An epoch has HF Trainer's number of micro-batches (``ceil(examples / batchSize)``) and of steps
(``ceil(micro-batches / (gradientAccumulationSteps x processes))``). `TokenObjective` is next-token
cross-entropy over target tokens, divided by the whole step's target tokens so that accumulation gives
the gradient of one big batch; preference.PreferenceObjective is dpo/orpo's. train.py's loop runs either.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.loss import mean_loss, token_losses
from kubetune_trainer.packing import IGNORE, batch_indices, collate, flatten, random_batches


def micro_batches(rows: list[dict[str, list[int]]], cfg: TrainingConfig, prompt_learning: bool) -> list[list[int]]:
    """Example indices of each micro-batch: ``ceil(examples / batchSize)`` of them, as HF's dataloader has.

    With packing, ``batchSize`` examples drawn at random, exactly HF's composition: each micro-batch is
    laid out as one padding-free row, which costs its tokens whatever their lengths. Without (and for
    prompt learning), ``batchSize`` examples of similar length (the last one fewer), right-padded.
    """
    if cfg.packing and not prompt_learning:
        return random_batches(len(rows), cfg.batch_size, cfg.seed)
    return batch_indices(rows, cfg.batch_size)


class Objective(Protocol):
    """What one training step minimises; the loop around it (steps, accumulation, checkpoints) is shared.

    `TokenObjective` is next-token cross-entropy; preference.PreferenceObjective is dpo/orpo's.
    """

    def batches(self, rows: list[dict[str, list[int]]], cfg: TrainingConfig) -> list[list[int]]: ...

    def tokens(self, row: dict[str, list[int]]) -> int: ...

    def loss(
        self, runner: Any, rows: list[dict[str, list[int]]], step_rows: list[dict[str, list[int]]], device: str
    ) -> torch.Tensor:
        """The share of the step's loss from ``rows`` (one micro-batch); ``step_rows``: the whole step's rows,
        on all ranks, which decide the normalisation."""
        ...

    def eval_loss(
        self,
        model: Any,
        rows: list[dict[str, list[int]]],
        batch_size: int,
        device: str,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    ) -> float: ...


@dataclass
class TokenObjective:
    """Cross-entropy on target tokens, summed and divided by the step's target tokens."""

    pad_id: int
    prompt_learning: bool = False
    varlen: bool = False  # a micro-batch becomes one row of its examples (packing.flatten), no padding

    def batches(self, rows: list[dict[str, list[int]]], cfg: TrainingConfig) -> list[list[int]]:
        return micro_batches(rows, cfg, self.prompt_learning)

    def tokens(self, row: dict[str, list[int]]) -> int:
        return len(row["input_ids"])  # no padding

    def loss(
        self, runner: Any, rows: list[dict[str, list[int]]], step_rows: list[dict[str, list[int]]], device: str
    ) -> torch.Tensor:
        n_targets = sum(t != IGNORE for r in step_rows for t in r["labels"])
        mb = {key: v.to(device) for key, v in collate([flatten(rows)] if self.varlen else rows, self.pad_id).items()}
        return token_losses(runner, mb, self.prompt_learning).sum() / max(n_targets, 1)

    def eval_loss(
        self,
        model: Any,
        rows: list[dict[str, list[int]]],
        batch_size: int,
        device: str,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    ) -> float:
        return mean_loss(model, rows, batch_size, self.pad_id, device, autocast, self.prompt_learning)


def plan_steps(n_batches: int, cfg: TrainingConfig, world_size: int = 1) -> tuple[int, int]:
    """(steps per epoch, total steps); HF Trainer's ``ceil(len(dataloader) / gradient_accumulation_steps)``.

    >>> plan_steps(184, TrainingConfig(epochs=2, gradient_accumulation_steps=4))
    (46, 92)
    """
    per_epoch = math.ceil(n_batches / (cfg.gradient_accumulation_steps * world_size))
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * per_epoch))
    return per_epoch, total


def step_plan(
    rows: list[dict[str, list[int]]], objective: Objective, cfg: TrainingConfig, per_epoch: int, world_size: int
) -> dict[str, Any]:
    """What an optimizer step holds, averaged over an epoch (status.progress shows it before training)."""
    tokens = sum(objective.tokens(r) for r in rows)
    return {
        "examplesPerStep": round(len(rows) / per_epoch, 2),
        "tokensPerStep": round(tokens / per_epoch, 1),
        "stepsPerEpoch": per_epoch,
        "batchSize": cfg.batch_size,
        "gradientAccumulationSteps": cfg.gradient_accumulation_steps,
        "processes": world_size,
    }
