# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""The training loop: a plain, readable PyTorch loop (torchtune-style), no HF Trainer.

One optimizer step = ``gradientAccumulationSteps`` micro-batches of ``batchSize`` examples (with packing
one padding-free row each, see packing.py), so an epoch takes HF Trainer's number of steps, and the log and status show
the plan (examples and tokens per step, steps per epoch) before the first step. The loss of a step is the sum of
per-token losses divided by the number of target tokens in the whole step, so accumulation gives the
same gradient as one big batch. The batch order of each epoch is a pure function of (seed, epoch), so a
run resumed from ``step-N`` sees exactly the batches it would have seen.

Under torchrun each step takes ``accumulation * world`` micro-batches and rank r trains on every r-th;
the loss is still divided by the step's total target tokens (over all ranks), scaled by the world size
because DDP (and FSDP's reduce-scatter) averages gradients. So 2 ranks x 1 micro-batch == 1 rank x 2
accumulated micro-batches, for either strategy.

What a step minimises is an `Objective` (objective.py: next-token cross-entropy by default; dpo/orpo bring
preference.PreferenceObjective, normalised per pair the same way), so every method shares this loop.
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

from kubetune_trainer import checkpoint, distributed, lean_lora, packed_attention
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.distributed import World
from kubetune_trainer.objective import Objective, TokenObjective, plan_steps, step_plan
from kubetune_trainer.packing import epoch_order
from kubetune_trainer.progress import plan_line

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
    best_step: int | None = None  # with early stopping: the step whose weights are the result


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> torch.dtype:
    """The autocast dtype; auto means bf16 where the hardware does it natively, else fp32."""
    if precision == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def autocast_factory(device: str, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.split(":")[0], dtype=dtype)  # "cuda:1" -> "cuda"


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
    dtype: torch.dtype,
    output_dir: Path,
    reporter: Any = None,
    metrics: Any = None,
    prompt_learning: bool = False,
    after_step: Callable[[int], None] | None = None,
    world: World | None = None,
    checkpoint_remote: str | None = None,
    objective: Objective | None = None,
    varlen: bool = False,
) -> TrainResult:
    """``dtype``: the compute (autocast) dtype, `resolve_precision`'s answer for this device.
    ``objective``: what a step minimises (next-token cross-entropy when None; ``varlen``: its micro-batches
    are batchSize random examples flattened into one row, attended per example by flash-attn's varlen
    kernel or packed_attention.py, see packing.py).

    ``checkpoint_remote``: where checkpoints are mirrored (``<s3 output>/checkpoints``) so that a pod
    on another node resumes from them; None when the output directory itself outlives the pod."""
    world = world or World()
    torch.manual_seed(cfg.seed)
    autocast = autocast_factory(device, dtype)
    objective = objective or TokenObjective(pad_id, prompt_learning, varlen)
    batches = objective.batches(rows, cfg)
    per_step = cfg.gradient_accumulation_steps * world.size  # micro-batches per optimizer step, all ranks
    per_epoch, total = plan_steps(len(batches), cfg, world.size)
    plan = step_plan(rows, objective, cfg, per_epoch, world.size)
    log.info(plan_line(plan, total))
    if reporter is not None and world.is_main:
        reporter.plan(plan)
    # DDP wrapper, or (fsdp) the model sharded in place, or the model itself; before the optimizer,
    # which must hold the sharded parameters under FSDP.
    runner = distributed.wrap(model, world, device, cfg.distributed.strategy)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW: one kernel per parameter instead of a dozen small ops each (CPU and CUDA both have it).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in trainable)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.learning_rate, cfg.layerwise_lr_decay), weight_decay=0.0, fused=fused or None
    )
    from transformers import get_scheduler

    scheduler = get_scheduler(cfg.scheduler, optimizer, math.ceil(cfg.warmup_ratio * total), total)
    scaler = torch.amp.GradScaler(enabled=device.startswith("cuda") and dtype == torch.float16)

    ckpt_dir = output_dir / "checkpoints"
    # One disk per pod: the first process of each pod pulls for its pod, the pod's other ranks read that.
    first_here = world.local_rank == 0
    pulled = checkpoint.pull_latest(checkpoint_remote, ckpt_dir) if checkpoint_remote and first_here else None
    distributed.barrier(world)
    state = checkpoint.load_latest(ckpt_dir, model, optimizer, scheduler) or {}
    step = state.get("step", 0)
    lowest, highest = distributed.same_across(world, step)
    if lowest != highest:  # e.g. pods of a gang on disks of their own, with no s3:// output to pull from
        raise RuntimeError(
            f"the ranks found checkpoints of different steps ({lowest} to {highest}; this one: {step}): "
            "a gang resumes only from checkpoints every pod sees (an s3:// output, or a volume they share)"
        )
    best, bad_evals = state.get("bestEvalLoss"), state.get("badEvals", 0)
    history: list[dict[str, Any]] = state.get("history", [])
    if step:
        log.info("resumed from step %d/%d (%s)", step, total, pulled or state["path"])

    def evaluate() -> float:
        return objective.eval_loss(model, val_rows, cfg.batch_size, device, autocast)

    def mirror(path: Path, keep: int | None = checkpoint.KEEP) -> str | None:
        """Upload a checkpoint of a remote-output run; a failed upload costs only resumability."""
        if not checkpoint_remote:
            return None
        try:
            return checkpoint.push(path, checkpoint_remote, keep)
        except Exception as e:  # botocore/aiohttp errors are not all OSError
            log.warning("could not upload checkpoint %s to %s (%s: %s)", path, checkpoint_remote, type(e).__name__, e)
            return None

    def snapshot() -> dict[str, Any]:
        return {"bestEvalLoss": best, "badEvals": bad_evals, "history": history}

    # With early stopping the weights of the best evaluation are the result (as with HF's
    # load_best_model_at_end), not those of the last, worse, evaluations before the stop.
    keep_best = cfg.early_stopping.patience > 0 and bool(val_rows)
    model.train()
    stopped_early, eval_loss = False, None
    window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.perf_counter()
    last_loss: float | None = None
    # One packed row per micro-batch: per-example attention where there is no varlen kernel. peft's
    # per-call Python is a visible share of a small model's step: plain LoRA layers run leaner meanwhile.
    one_row = packed_attention.enabled(model) if varlen else contextlib.nullcontext()
    orders: dict[int, list[int]] = {}  # the epoch's batch order, shuffled once per epoch, not per step
    with _SigtermFlag() as sigterm, one_row, lean_lora.enabled(model):
        while step < total:
            epoch, k = divmod(step, per_epoch)
            if epoch not in orders:
                orders = {epoch: epoch_order(len(batches), cfg.seed, epoch)}
            order = orders[epoch]
            group = order[k * per_step : (k + 1) * per_step]
            if world.active:  # every rank needs the same number of micro-batches: wrap around at the end
                group = [order[(k * per_step + j) % len(order)] for j in range(per_step)]
            step_rows = [rows[i] for b in group for i in batches[b]]
            window_tokens += sum(objective.tokens(r) for r in step_rows)
            mine = group[world.rank :: world.size]
            summed = torch.zeros((), device=device)  # on the device: one .item() per step, not per micro-batch
            for j, b in enumerate(mine):
                # Gradients are all-reduced (ddp) or reduce-scattered (fsdp) on the last micro-batch only.
                with distributed.gradient_sync(runner, world, enabled=j == len(mine) - 1):
                    with autocast():
                        loss = objective.loss(runner, [rows[i] for i in batches[b]], step_rows, device)
                    scaler.scale(loss * world.size).backward()
                summed += loss.detach()
            step_loss = distributed.sum_across(world, summed.item())
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_loss += step_loss
            window_steps += 1  # counted, not derived from step: a resumed run starts mid-window
            last_loss = step_loss

            if step % cfg.eval_steps == 0 or step == total:
                eval_loss = evaluate() if val_rows else None
                if eval_loss is not None:
                    if best is None or eval_loss < best - cfg.early_stopping.min_delta:
                        best, bad_evals = eval_loss, 0
                        if keep_best:  # all ranks: gathering the weights is a collective under fsdp
                            weights = checkpoint.trainable_weights(model, world.is_main)
                            if weights is not None:
                                mirror(checkpoint.save_best(ckpt_dir, weights, step, eval_loss), keep=None)
                    else:
                        bad_evals += 1
                    patience = cfg.early_stopping.patience
                    stopped_early = patience > 0 and bad_evals >= patience and step < total
            if step % cfg.logging_steps == 0 or step == total or stopped_early:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                p = {
                    "step": step,
                    "totalSteps": total,
                    "epoch": round(step / per_epoch, 4),
                    "loss": window_loss / window_steps,
                    "evalLoss": eval_loss,
                    "tokensPerSecond": round(tps, 1),
                    "etaSeconds": round(elapsed / window_steps * (total - step), 1),
                    "learningRate": scheduler.get_last_lr()[0],
                }
                history.append(p)
                if reporter is not None and world.is_main:
                    reporter.progress(p)
                if metrics is not None and world.is_main:
                    metrics.update(p)
                window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.perf_counter()
            stop = distributed.any_across(world, sigterm.set) if world.active else sigterm.set
            if step % cfg.checkpoint_steps == 0 or stop:
                captured = checkpoint.capture(model, optimizer, world.is_main)  # all ranks: a collective in fsdp
                if captured is not None:
                    saved = checkpoint.save(ckpt_dir, step, captured, scheduler, snapshot())
                    where = mirror(saved) or str(saved)  # within the grace period after a SIGTERM too
                    if reporter is not None:
                        reporter.checkpoint(where)
                distributed.barrier(world)  # nobody runs ahead (or exits) while rank 0 writes
            if after_step is not None:
                after_step(step)
            if stop:
                raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint written")
            if stopped_early:
                log.info("early stopping at step %d: no validation improvement in %d evaluations", step, bad_evals)
                break
    best_step = None
    if keep_best:
        distributed.barrier(world)  # rank 0 has written best/ before anyone reads it
        saved_best = checkpoint.load_best(ckpt_dir)
        if saved_best is not None:
            weights, meta = saved_best
            best_step = meta["step"]
            if best_step != step:
                checkpoint.restore_weights(model, weights)
                log.info("restored the weights of step %d (best eval loss %.4f)", best_step, meta["evalLoss"])
    return TrainResult(step, last_loss, best, stopped_early, state.get("path"), history, best_step)
