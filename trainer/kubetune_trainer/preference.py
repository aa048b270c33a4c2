# torch is partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Preference tuning (method dpo, orpo): learn to prefer the chosen response of a pair over the rejected one.

Room: the trainer. Tokenises (prompt, chosen, rejected) rows into pairs, scores them (summed log-probs of
the response tokens, prompt masked), and holds the losses; `PreferenceObjective` is the per-step loss the
training loop (train.py) runs instead of next-token cross-entropy, so checkpoints, resume, progress and
early stopping are the loop's own.

A pair row keeps the chosen sequence as ``input_ids``/``labels`` (pre-shifted, as packing.py makes them),
so the SFT tools (`loss.mean_loss`) give the NLL of the chosen responses for free, and the rejected one
as ``rejected_input_ids``/``rejected_labels``.

- dpo sigmoid: -(1-e) log s(b d) - e log s(-b d), d = (log pi_c - log ref_c) - (log pi_r - log ref_r)
  (e: label smoothing, conservative DPO); hinge: relu(1 - b d); ipo: (d' - 1/2b)^2 with d' the same
  log-ratios averaged per response token (as trl does);
- orpo: NLL of the chosen response + lambda * -log s(log odds(c) - log odds(r)) on length-averaged
  log-probs, odds(y) = p / (1 - p); no reference model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kubetune_trainer.config import FieldsConfig, JobConfig, TrainingConfig
from kubetune_trainer.formatting import preference_parts
from kubetune_trainer.loss import token_losses
from kubetune_trainer.packing import IGNORE, batch_indices, collate, tokenize_pair

Row = dict[str, list[int]]


def tokenize_preference(row: dict[str, Any], fields: FieldsConfig, tokenizer: Any, max_len: int) -> Row | None:
    """One pair row; None when either response has no token left within ``max_len``."""
    prompt, chosen_text, rejected_text = preference_parts(row, fields, tokenizer)
    chosen = tokenize_pair(prompt, chosen_text, tokenizer, max_len)
    rejected = tokenize_pair(prompt, rejected_text, tokenizer, max_len)
    if chosen is None or rejected is None:
        return None
    return {**chosen, "rejected_input_ids": rejected["input_ids"], "rejected_labels": rejected["labels"]}


def sequence_logps(model: Any, rows: list[Row], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs, response-token counts) of ``[chosen of every row] + [rejected of every row]``.

    One forward over both halves; `token_losses` projects only the response positions onto the vocabulary.
    """
    seqs = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    seqs += [{"input_ids": r["rejected_input_ids"], "labels": r["rejected_labels"]} for r in rows]
    batch = {k: v.to(device) for k, v in collate(seqs, pad_id).items()}
    keep = batch["labels"] != IGNORE
    losses = token_losses(model, batch)  # row-major over the kept positions
    owner = keep.nonzero()[:, 0]
    logps = torch.zeros(len(seqs), device=device, dtype=losses.dtype).index_add(0, owner, -losses)
    return logps, keep.sum(1)


def dpo_losses(
    policy: torch.Tensor,
    reference: torch.Tensor,
    counts: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair DPO loss; each argument is ``[chosen..., rejected...]`` as `sequence_logps` returns it.

    >>> x = torch.tensor([-1.0, -3.0])  # a policy that prefers the chosen response more than the reference
    >>> round(dpo_losses(x, torch.tensor([-2.0, -2.0]), torch.tensor([1, 1]), 0.5).item(), 4)
    0.3133
    """
    ratios = policy - reference
    if loss_type == "ipo":
        ratios = ratios / counts.clamp(min=1)
    chosen, rejected = ratios.chunk(2)
    delta = chosen - rejected
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation near 0 or underflow far from it."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_losses(mean_logps: torch.Tensor) -> torch.Tensor:
    """Per-pair ORPO odds-ratio loss -log s(log odds(chosen) - log odds(rejected)) on length-averaged log-probs.

    >>> round(odds_ratio_losses(torch.tensor([-0.5, -2.0])).item(), 4)
    0.0967
    """
    chosen, rejected = mean_logps.float().chunk(2)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return -F.logsigmoid(log_odds)


REFERENCE_ADAPTER = "reference"


@dataclass
class PreferenceObjective:
    """The per-step loss of a dpo/orpo run (see objective.Objective).

    ``model``: the policy; with an adapter (policy lora), the reference is the same model with the adapter
    disabled. ``reference``: a frozen copy (dpo with policy full), else None. ``reference_adapter``: a dpo
    run that continues a parent's adapter (spec.initFrom) holds the parent's adapter a second time, frozen,
    and uses it as the reference: the model the preference stage starts from, not the bare base.
    """

    method: str  # dpo | orpo
    beta: float
    loss_type: str
    label_smoothing: float
    orpo_lambda: float
    pad_id: int
    model: Any
    reference: Any = None
    reference_adapter: str | None = None

    def batches(self, rows: list[Row], cfg: TrainingConfig) -> list[list[int]]:
        """``batchSize`` pairs of similar length a micro-batch (packing does not apply to pairs)."""
        return batch_indices(rows, cfg.batch_size)

    def tokens(self, row: Row) -> int:
        return len(row["input_ids"]) + len(row["rejected_input_ids"])

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or hasattr(self.model, "disable_adapter")

    @torch.no_grad()
    def reference_logps(self, rows: list[Row], device: str) -> torch.Tensor:
        if self.reference is not None:
            return sequence_logps(self.reference, rows, self.pad_id, device)[0]
        if self.reference_adapter is not None:
            active = self.model.active_adapter
            # peft's set_adapter makes the active adapter's weights trainable and freezes the others:
            # switching back restores exactly the policy's trainable set.
            self.model.set_adapter(self.reference_adapter)
            try:
                return sequence_logps(self.model, rows, self.pad_id, device)[0]
            finally:
                self.model.set_adapter(active)
        with self.model.disable_adapter():
            return sequence_logps(self.model, rows, self.pad_id, device)[0]

    def loss(self, runner: Any, rows: list[Row], step_rows: list[Row], device: str) -> torch.Tensor:
        """This micro-batch's share of the step loss: per-pair losses over the step's pairs (and, for orpo,
        the NLL over the step's chosen-response tokens), so accumulation equals one big batch."""
        logps, counts = sequence_logps(runner, rows, self.pad_id, device)
        if self.method == "orpo":
            chosen_tokens = sum(sum(t != IGNORE for t in r["labels"]) for r in step_rows)
            nll = -logps[: len(rows)].sum() / max(chosen_tokens, 1)
            odds = odds_ratio_losses(logps / counts.clamp(min=1)).sum() / len(step_rows)
            return nll + self.orpo_lambda * odds
        reference = self.reference_logps(rows, device)
        losses = dpo_losses(logps, reference, counts, self.beta, self.loss_type, self.label_smoothing)
        return losses.sum() / len(step_rows)

    @torch.no_grad()
    def eval_loss(
        self,
        model: Any,
        rows: list[Row],
        batch_size: int,
        device: str,
        autocast: Callable[[], AbstractContextManager[Any]],
    ) -> float:
        """The training loss over all of ``rows`` (validation: early stopping watches it)."""
        was_training = model.training
        model.eval()
        total = torch.zeros((), device=device)
        for group in batch_indices(rows, batch_size):
            with autocast():
                total += self.loss(model, [rows[i] for i in group], rows, device)
        model.train(was_training)
        return float(total.item())


def objective(model: Any, cfg: JobConfig, pad_id: int, init_adapter: Path | None = None) -> PreferenceObjective:
    """The objective for a dpo/orpo ``cfg``, after `model.apply_method`; dpo with policy full keeps a frozen
    copy of the weights as they are now (the base, or spec.initFrom's model) as its reference; dpo that
    trains on a parent's adapter (``init_adapter``) loads it once more, frozen, as the reference."""
    p = cfg.preference
    reference, reference_adapter = None, None
    if cfg.method == "dpo" and p.policy == "full":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    elif cfg.method == "dpo" and init_adapter is not None:
        model.load_adapter(str(init_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        reference_adapter = REFERENCE_ADAPTER
    return PreferenceObjective(
        cfg.method, p.beta, p.loss_type, p.label_smoothing, p.orpo_lambda, pad_id, model, reference, reference_adapter
    )


def release(objective: PreferenceObjective | None) -> None:
    """Drop the reference adapter before export: the artifact holds the policy's adapter only."""
    if objective is not None and objective.reference_adapter is not None:
        objective.model.delete_adapter(objective.reference_adapter)
        objective.reference_adapter = None


@torch.no_grad()
def evaluate(
    model: Any,
    rows: list[Row],
    batch_size: int,
    pad_id: int,
    device: str,
    autocast: Callable[[], AbstractContextManager[Any]],
    objective: PreferenceObjective | None = None,
    beta: float = 0.1,
) -> dict[str, float]:
    """preferenceAccuracy: share of pairs whose chosen response has the higher summed log-prob; with an
    ``objective`` that has a reference, rewardMargin: the mean DPO implicit reward margin
    beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    wins, margins = 0, 0.0
    with_margin = objective is not None and objective.has_reference
    for group in batch_indices(rows, batch_size):
        batch = [rows[i] for i in group]
        with autocast():
            logps = sequence_logps(model, batch, pad_id, device)[0].float()
            chosen, rejected = logps.chunk(2)
            wins += int((chosen > rejected).sum().item())
            if with_margin:
                assert objective is not None
                ref_c, ref_r = objective.reference_logps(batch, device).float().chunk(2)
                margins += float(((chosen - ref_c) - (rejected - ref_r)).sum().item())
    model.train(was_training)
    out = {"preferenceAccuracy": round(wins / len(rows), 6)}
    if with_margin:
        out["rewardMargin"] = round(beta * margins / len(rows), 6)
    return out
