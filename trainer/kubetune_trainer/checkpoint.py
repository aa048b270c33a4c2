"""Atomic training checkpoints under ``<output>/checkpoints/step-N``.

A checkpoint is written to a hidden temp directory and renamed into place, so a directory named
``step-N`` is always complete: a run killed mid-write (SIGKILL, node loss) leaves only a ``.tmp-*``
directory that the next attempt ignores and removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

KEEP = 2  # older checkpoints are deleted; the newest two survive a crash during the next save


def capture(model: Any, optimizer: Any, is_main: bool = True) -> dict[str, Any] | None:
    """Trainable weights and optimizer state as whole CPU tensors, ready for ``save``.

    Under FSDP the state is sharded, so this is a collective: every rank calls it and rank 0 gets the
    gathered state (keyed by parameter name). Otherwise rank 0 copies its own (other ranks: None).
    """
    from kubetune_trainer import distributed

    if distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        trainable = distributed.full_state_dict(model)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim = get_optimizer_state_dict(model, optimizer, options=options)
        return {"trainable": trainable, "optimizer": optim, "optimizerKeys": "names"} if is_main else None
    if not is_main:
        return None
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return {"trainable": trainable, "optimizer": optimizer.state_dict(), "optimizerKeys": "indices"}


def save(ckpt_dir: Path, step: int, captured: dict[str, Any], scheduler: Any, state: dict[str, Any]) -> Path:
    """Write ``captured`` (from ``capture``) plus scheduler, RNG and loop state as ``step-N``, atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step}"
    tmp = ckpt_dir / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(captured["trainable"], tmp / "trainable.pt")
    torch.save(
        {
            "optimizer": captured["optimizer"],
            "optimizerKeys": captured["optimizerKeys"],
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        },
        tmp / "optimizer.pt",
    )
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in complete(ckpt_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir() if path.is_dir() else []:
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def complete(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_latest(ckpt_dir: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint into the given objects; return its state (None if none)."""
    for leftover in ckpt_dir.glob(".tmp-step-*") if ckpt_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    found = complete(ckpt_dir)
    if not found:
        return None
    path = found[-1]
    trainable = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    # Our own file: optimizer/scheduler state holds plain Python objects besides tensors.
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    keys = opt.get("optimizerKeys", "indices")
    from kubetune_trainer import distributed

    if distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if keys != "names":
            raise RuntimeError(f"{path} was written by a run without fsdp; resume it with the same strategy")
        options = StateDictOptions(full_state_dict=True, strict=False)  # every rank shards its own copy
        set_model_state_dict(model, trainable, options=options)
        set_optimizer_state_dict(model, optimizer, opt["optimizer"], options=options)
    else:
        if keys != "indices":
            raise RuntimeError(f"{path} was written by an fsdp run; resume it with strategy fsdp")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(opt["rng"])
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    state["path"] = str(path)
    return state
