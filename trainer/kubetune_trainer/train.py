# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""The training loop: a plain, readable PyTorch loop (torchtune-style), no HF Trainer.

One optimizer step = ``gradientAccumulationSteps`` micro-batches. The loss of a step is the sum of
per-token losses divided by the number of target tokens in the whole step, so accumulation gives the
same gradient as one big batch. The batch order of each epoch is a pure function of (seed, epoch), so a
run resumed from ``step-N`` sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kubetune_trainer import checkpoint
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.loss import mean_loss, token_losses
from kubetune_trainer.packing import IGNORE, batch_indices, collate, epoch_order

log = logging.getLogger("kubetune_trainer")


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and the process should exit so the Job retries."""


@dataclass
class TrainResult:
    steps: int
    train_loss: float | None
    best_eval_loss: float | None
    stopped_early: bool
    resumed_from: str | None
    history: list[dict[str, Any]] = field(default_factory=list)


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> torch.dtype:
    """The autocast dtype; auto means bf16 where the hardware does it natively, else fp32."""
    if precision == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def autocast_factory(device: str, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=dtype)


def param_groups(model: Any, lr: float, decay: float | None) -> list[dict[str, Any]]:
    """One group, or with layer-wise LR decay one group per depth: layer i of n gets lr * decay^(n-1-i).

    Parameters outside the numbered layers go to the top (LM head, final norm, prompt embeddings) or
    the bottom (token embeddings).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay is None or decay == 1:
        return [{"params": [p for _, p in params], "lr": lr}]
    depth = {n: int(m.group(1)) for n, _ in params if (m := re.search(r"\.layers\.(\d+)\.", n))}
    n_layers = max(depth.values(), default=-1) + 1
    groups: dict[int, list[Any]] = {}
    for name, p in params:
        level = depth.get(name, -1 if "embed_tokens" in name else n_layers - 1)
        groups.setdefault(level, []).append(p)
    return [{"params": ps, "lr": lr * decay ** (n_layers - 1 - lvl)} for lvl, ps in sorted(groups.items())]


def plan_steps(n_batches: int, cfg: TrainingConfig) -> tuple[int, int]:
    """(steps per epoch, total steps)."""
    per_epoch = math.ceil(n_batches / cfg.gradient_accumulation_steps)
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * per_epoch))
    return per_epoch, total


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (so the checkpoint is consistent)."""

    def __init__(self) -> None:
        self.set = False
        self._old: Any = None

    def __enter__(self) -> _SigtermFlag:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        log.warning("SIGTERM: will checkpoint after the current step and exit")
        self.set = True

    def __exit__(self, *_: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train(
    model: Any,
    rows: list[dict[str, list[int]]],
    val_rows: list[dict[str, list[int]]],
    cfg: TrainingConfig,
    *,
    pad_id: int,
    device: str,
    output_dir: Path,
    reporter: Any = None,
    metrics: Any = None,
    prompt_learning: bool = False,
    after_step: Callable[[int], None] | None = None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    autocast = autocast_factory(device, resolve_precision(cfg.precision, device))
    batches = batch_indices(rows, cfg.batch_size)
    per_epoch, total = plan_steps(len(batches), cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.learning_rate, cfg.layerwise_lr_decay), weight_decay=0.0)
    from transformers import get_scheduler

    scheduler = get_scheduler(cfg.scheduler, optimizer, math.ceil(cfg.warmup_ratio * total), total)
    scaler = torch.amp.GradScaler(
        enabled=device == "cuda" and resolve_precision(cfg.precision, device) == torch.float16
    )

    ckpt_dir = output_dir / "checkpoints"
    state = checkpoint.load_latest(ckpt_dir, model, optimizer, scheduler) or {}
    step = state.get("step", 0)
    best, bad_evals = state.get("bestEvalLoss"), state.get("badEvals", 0)
    history: list[dict[str, Any]] = state.get("history", [])
    if step:
        log.info("resumed from %s (step %d/%d)", state["path"], step, total)

    def evaluate() -> float:
        return mean_loss(model, val_rows, cfg.batch_size, pad_id, device, autocast, prompt_learning)

    def snapshot() -> dict[str, Any]:
        return {"bestEvalLoss": best, "badEvals": bad_evals, "history": history}

    model.train()
    stopped_early, eval_loss = False, None
    window_loss, window_tokens, window_start, last_loss = 0.0, 0, time.perf_counter(), None
    with _SigtermFlag() as sigterm:
        while step < total:
            epoch, k = divmod(step, per_epoch)
            order = epoch_order(len(batches), cfg.seed, epoch)
            group = order[k * cfg.gradient_accumulation_steps : (k + 1) * cfg.gradient_accumulation_steps]
            micro = [collate([rows[i] for i in batches[b]], pad_id) for b in group]
            n_targets = sum(int((mb["labels"] != IGNORE).sum()) for mb in micro)
            step_loss = 0.0
            window_tokens += sum(len(rows[i]["input_ids"]) for b in group for i in batches[b])  # no padding
            for mb in micro:
                mb = {key: v.to(device) for key, v in mb.items()}
                with autocast():
                    losses = token_losses(model, mb, prompt_learning)
                loss = losses.sum() / max(n_targets, 1)
                scaler.scale(loss).backward()
                step_loss += loss.item()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_loss += step_loss
            last_loss = step_loss

            if step % cfg.eval_steps == 0 or step == total:
                eval_loss = evaluate() if val_rows else None
                if eval_loss is not None:
                    if best is None or eval_loss < best - cfg.early_stopping.min_delta:
                        best, bad_evals = eval_loss, 0
                    else:
                        bad_evals += 1
                    patience = cfg.early_stopping.patience
                    stopped_early = patience > 0 and bad_evals >= patience and step < total
            if step % cfg.logging_steps == 0 or step == total or stopped_early:
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % cfg.logging_steps + 1
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                p = {
                    "step": step,
                    "totalSteps": total,
                    "epoch": round(step / per_epoch, 4),
                    "loss": window_loss / steps_in_window,
                    "evalLoss": eval_loss,
                    "tokensPerSecond": round(tps, 1),
                    "etaSeconds": round(elapsed / steps_in_window * (total - step), 1),
                    "learningRate": scheduler.get_last_lr()[0],
                }
                history.append(p)
                if reporter is not None:
                    reporter.progress(p)
                if metrics is not None:
                    metrics.update(p)
                window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
            if step % cfg.checkpoint_steps == 0 or sigterm.set:
                saved = checkpoint.save(ckpt_dir, step, model, optimizer, scheduler, snapshot())
                if reporter is not None:
                    reporter.checkpoint(str(saved))
            if after_step is not None:
                after_step(step)
            if sigterm.set:
                raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint written")
            if stopped_early:
                log.info("early stopping at step %d: no validation improvement in %d evaluations", step, bad_evals)
                break
    return TrainResult(step, last_loss, best, stopped_early, state.get("path"), history)
