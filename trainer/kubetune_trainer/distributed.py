"""Several training processes under ``torchrun``: one per GPU (or per CPU worker with gloo), in one pod
or across the pods of a gang (spec.resources.nodes > 1, one pod per node).

``launch`` re-runs the trainer under torchrun when the pod has more than one GPU (or the spec asks for
several processes), and always in a gang's pod, so the operator's pod command stays the same for one
GPU, eight or eight nodes of eight. A gang uses torchrun's static rendezvous on node 0 (`Rendezvous`,
from the operator's environment). Two strategies:

- ``ddp``: every rank holds the whole model; gradients are averaged (DistributedDataParallel);
- ``fsdp``: every decoder layer and the model around them are sharded with FSDP2 (``fully_shard``), so
  weights, gradients and optimizer state are split across ranks, for models that do not fit one GPU.

Without ``WORLD_SIZE`` (the usual single-process run) every helper here is a no-op, so the training
loop reads the same either way. World rank 0 alone writes the output and talks to Kubernetes; local
rank 0 of each pod is the one that fills that pod's own disk (data, pulled checkpoints), see `in_turn`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from kubetune_trainer.environment import Rendezvous

log = logging.getLogger("kubetune_trainer")


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's: read once from the environment with `from_environ`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> World:
        """torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; one process (rank 0 of 1) without them.

        >>> World.from_environ({}), World.from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).is_main
        (World(rank=0, size=1, local_rank=0), False)
        """
        size = int(environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        return cls(int(environ["RANK"]), size, int(environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init(world: World, backend: str | None = None) -> None:
    """Join the process group of ``world``; a no-op for one process.

    ``backend``: spec.training.distributed.backend as the operator passed it (KUBETUNE_DIST_BACKEND);
    None: nccl on GPU, gloo on CPU."""
    if not world.active or tdist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    tdist.init_process_group(backend=process_group_backend(backend, torch.cuda.is_available()))


def process_group_backend(backend: str | None, cuda: bool) -> str:
    """What `init_process_group` is given. NCCL moves CUDA tensors only, and the loop's small sums (the
    step's loss, the SIGTERM flag, the resume step) are CPU tensors: with nccl those go through gloo.

    >>> process_group_backend(None, cuda=True), process_group_backend("gloo", True), process_group_backend(None, False)
    ('cpu:gloo,cuda:nccl', 'gloo', 'gloo')
    """
    chosen = backend or ("nccl" if cuda else "gloo")
    return "cpu:gloo,cuda:nccl" if chosen == "nccl" else chosen


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


def same_across(world: World, value: int) -> tuple[int, int]:
    """(smallest, largest) ``value`` of all ranks: equal when every rank agrees."""
    if not world.active:
        return value, value
    t = torch.tensor([value, -value], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return -int(t[1].item()), int(t[0].item())


@contextlib.contextmanager
def in_turn(world: World) -> Iterator[None]:
    """Run the block on world rank 0 first, then on local rank 0 of every other pod, then on the rest.

    For work that fills a disk (the data splits, token ids, the checkpoint folder's owner): each pod
    has its own, so each pod's first process must do it there, after rank 0, so that on a volume the
    pods share they find rank 0's files and reuse them rather than write them at the same time. Every
    rank calls `barrier` twice, whatever its turn (and also when the block raises, so that the others
    go on to meet the same error rather than wait forever).
    """
    turn = 0 if world.is_main else 1 if world.local_rank == 0 else 2
    for _ in range(turn):
        barrier(world)
    try:
        yield
    finally:
        for _ in range(2 - turn):
            barrier(world)


def under_torchrun(environ: Mapping[str, str]) -> bool:
    """True in a process torchrun started (it sets ``LOCAL_RANK``): the relaunch has happened."""
    return "LOCAL_RANK" in environ


def processes_wanted(requested: int | None) -> int:
    """Processes for this pod: the spec's number, else one per visible GPU (1 on CPU)."""
    if requested is not None:
        return requested
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def torchrun_command(nproc: int, argv: list[str], rendezvous: Rendezvous | None = None) -> list[str]:
    """This trainer's own command line under torchrun: on one node (``--standalone`` picks a free port),
    or as node ``rendezvous.node_rank`` of a gang, with static rendezvous on node 0.

    >>> torchrun_command(2, ["train", "--spec", "s.yaml"])[1:6]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2', '-m']
    >>> torchrun_command(1, ["train"], Rendezvous(2, 1, "j-0.j.ns.svc", 29500))[3:8]
    ['--nnodes=2', '--node-rank=1', '--master-addr=j-0.j.ns.svc', '--master-port=29500', '--nproc-per-node=1']
    """
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if rendezvous is None:
        launcher += ["--standalone"]
    else:
        r = rendezvous
        launcher += [f"--nnodes={r.nodes}", f"--node-rank={r.node_rank}"]
        launcher += [f"--master-addr={r.master_addr}", f"--master-port={r.master_port}"]
    return [*launcher, f"--nproc-per-node={nproc}", "-m", "kubetune_trainer", *argv]


def wait_for_address(host: str, timeout: float = 600, every: float = 2) -> None:
    """Until ``host`` resolves: node 0's DNS record appears only once its pod exists, and the pods of a
    gang start in any order. A name that never resolves is an `OSError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise OSError(f"node 0's address {host} did not resolve within {timeout:.0f}s: {e}") from e
            log.info("waiting for node 0's address %s to resolve (%s)", host, e)
            time.sleep(every)


def launch(nproc: int, argv: list[str], rendezvous: Rendezvous | None = None) -> None:
    """Replace this process with torchrun running ``nproc`` copies of the trainer (this pod's share
    of the gang's when ``rendezvous`` is given).

    exec, not a child: the kubelet's SIGTERM then reaches torchrun, which passes it to every rank, and
    each rank checkpoints as it would alone.
    """
    if rendezvous is not None:
        wait_for_address(rendezvous.master_addr)
    cmd = torchrun_command(nproc, argv, rendezvous)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


def wrap(model: Any, world: World, device: str, strategy: str = "ddp") -> Any:
    """The module to run forward/backward through.

    ddp: a DistributedDataParallel wrapper. fsdp: the model itself, sharded in place; the root FSDP
    module is the transformers model inside any peft wrapper, because ``generate`` calls that one.
    """
    if not world.active:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        from transformers import PreTrainedModel

        inner = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
        layer_classes = set(getattr(inner, "_no_split_modules", None) or ())
        for module in inner.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module)
        fully_shard(inner)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[world.local_rank] if device.startswith("cuda") else None)


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def gradient_sync(runner: Any, world: World, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of a step (accumulation)."""
    if enabled or not world.active:
        yield
    elif hasattr(runner, "no_sync"):  # DDP
        with runner.no_sync():
            yield
    else:  # FSDP2: gradients stay unsharded and accumulate locally until the last micro-batch
        roots = [m for m in runner.modules() if hasattr(m, "set_requires_gradient_sync")]
        for m in roots:
            m.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for m in roots:
                m.set_requires_gradient_sync(True, recurse=False)


def full_state_dict(model: Any, trainable_only: bool = True) -> dict[str, Any]:
    """The whole (unsharded) state on CPU, on rank 0; a collective under FSDP, so every rank calls it.

    Other ranks get an empty dict. Keys are the usual parameter names (FSDP2 does not rename).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not trainable_only:
        return state
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def shutdown(world: World) -> None:
    """Every rank calls this last. The others reach it while rank 0 still exports: they wait for it
    there, because a rank tearing gloo down while a peer is still connected can abort at exit
    ("terminate called without an active exception", seen in CI), which fails the whole torchrun."""
    if world.active and tdist.is_initialized():
        barrier(world)
        tdist.destroy_process_group()
