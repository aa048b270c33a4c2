"""Data parallelism under ``torchrun``: one process per GPU (or per CPU worker with gloo).

Without ``WORLD_SIZE`` (the usual single-process run) every helper here is a no-op, so the training
loop reads the same either way. Rank 0 alone writes files and talks to Kubernetes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init() -> World:
    """Join the process group torchrun describes in the environment (nccl on GPU, gloo on CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        tdist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return world


def device_for(world: World) -> str:
    if torch.cuda.is_available():
        return f"cuda:{world.local_rank}" if world.active else "cuda"
    return "cpu"


def barrier(world: World) -> None:
    if world.active:
        tdist.barrier()


def sum_across(world: World, value: float) -> float:
    if not world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    tdist.all_reduce(t)
    return float(t.item())


def any_across(world: World, flag: bool) -> bool:
    """True if any rank says so (e.g. SIGTERM reached only some workers)."""
    return sum_across(world, float(flag)) > 0


def wrap(model: Any, world: World, device: str) -> Any:
    """The module to run forward/backward through: DDP-wrapped when there are several ranks."""
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[world.local_rank] if device.startswith("cuda") else None)


def shutdown(world: World) -> None:
    if world.active and tdist.is_initialized():
        tdist.destroy_process_group()
