"""Atomic training checkpoints under ``<output>/checkpoints/step-N``.

A checkpoint is written to a hidden temp directory and renamed into place, so a directory named
``step-N`` is always complete: a run killed mid-write (SIGKILL, node loss) leaves only a ``.tmp-*``
directory that the next attempt ignores and removes.

Every checkpoint folder holds ``manifest.json`` (its files and their sizes; the place for more metadata
about a checkpoint). A run whose output is remote (``s3://``) mirrors each checkpoint to
``<output>/checkpoints/step-N/`` with ``push``: the files first, the manifest last, so a remote folder
without a manifest (an upload cut short) is never used. A pod that starts on another node, with an empty
local cache, gets the newest complete remote checkpoint back with ``pull_latest`` before it resumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

KEEP = 2  # older checkpoints are deleted; the newest two survive a crash during the next save
MANIFEST = "manifest.json"  # written last, locally and remotely: a folder with it is whole
OWNER_FILE = "owner.json"  # {"uid", "run"}: which FineTuneJob run wrote the checkpoints beside it
log = logging.getLogger("kubetune_trainer")


def claim(ckpt_dir: Path, uid: str | None, run: str) -> bool:
    """Make `ckpt_dir` this run's before anything resumes from it; False when it held another's.

    Checkpoints written by another FineTuneJob (a deleted one re-created under the same name and
    output has a new uid) or another run, or by a trainer that did not mark its checkpoints, are never
    resumed from: they are moved aside to ``checkpoints-foreign/`` (kept, not deleted) with a log line.
    """
    mine = {"uid": uid, "run": str(run)}
    marker = ckpt_dir / OWNER_FILE
    owner = json.loads(marker.read_text()) if marker.exists() else None
    if owner == mine:
        return True
    foreign = owner is not None or (ckpt_dir.is_dir() and any(ckpt_dir.iterdir()))
    if foreign:
        aside = ckpt_dir.parent / "checkpoints-foreign" / f"{(owner or {}).get('uid') or 'unmarked'}-{time.time():.0f}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(ckpt_dir, aside)
        log.warning(
            "ignoring checkpoints in %s: written by FineTuneJob uid %s run %s, not by this one (uid %s run %s); "
            "moved to %s, training starts from step 0",
            ckpt_dir,
            (owner or {}).get("uid", "unknown"),
            (owner or {}).get("run", "unknown"),
            uid,
            run,
            aside,
        )
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(mine))
    os.replace(tmp, marker)
    return not foreign


def capture(model: Any, optimizer: Any, is_main: bool = True) -> dict[str, Any] | None:
    """Trainable weights and optimizer state as whole CPU tensors, ready for ``save``.

    Under FSDP the state is sharded, so this is a collective: every rank calls it and rank 0 gets the
    gathered state (keyed by parameter name). Otherwise rank 0 copies its own (other ranks: None).
    """
    from kubetune_trainer import distributed

    trainable = trainable_weights(model, is_main)
    if distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim = get_optimizer_state_dict(model, optimizer, options=options)
        return {"trainable": trainable, "optimizer": optim, "optimizerKeys": "names"} if is_main else None
    if not is_main:
        return None
    return {"trainable": trainable, "optimizer": optimizer.state_dict(), "optimizerKeys": "indices"}


def trainable_weights(model: Any, is_main: bool = True) -> dict[str, torch.Tensor] | None:
    """Whole trainable tensors on CPU, by parameter name, on rank 0 (a collective under FSDP)."""
    from kubetune_trainer import distributed

    if distributed.is_sharded(model):
        gathered = distributed.full_state_dict(model)
        return gathered if is_main else None
    if not is_main:
        return None
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def restore_weights(model: Any, weights: dict[str, Any]) -> None:
    """Load whole tensors into the model; under FSDP every rank passes them and keeps its own shard."""
    from kubetune_trainer import distributed

    if distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def save_best(ckpt_dir: Path, weights: dict[str, torch.Tensor], step: int, eval_loss: float) -> Path:
    """The trainable weights of the best evaluation so far, in ``best/``, replaced atomically."""
    final = ckpt_dir / "best"
    tmp = ckpt_dir / f".tmp-best-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(weights, tmp / "trainable.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "evalLoss": eval_loss}))
    write_manifest(tmp, step)
    _fsync_dir(tmp)
    old = ckpt_dir / f".old-best-{os.getpid()}"
    if final.exists():
        os.rename(final, old)  # two renames: a crash leaves either the old best or the new, never half
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_best(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(weights, {"step", "evalLoss"}) of the best evaluation, or None when none was saved."""
    path = ckpt_dir / "best"
    if not (path / "state.json").exists():  # a crash between save_best's two renames: the old one
        path = next((p for p in sorted(ckpt_dir.glob(".old-best-*")) if (p / "state.json").exists()), path)
    if not (path / "state.json").exists():
        return None
    weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    return weights, json.loads((path / "state.json").read_text())


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
    write_manifest(tmp, step)
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in complete(ckpt_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_manifest(path: Path, step: int) -> dict[str, Any]:
    """``manifest.json``: the step and every other file of the checkpoint with its size in bytes."""
    files = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file() and f.name != MANIFEST}
    manifest = {"step": step, "files": files}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


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
    for leftover in ckpt_dir.glob(".tmp-*") if ckpt_dir.is_dir() else []:
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
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if keys != "names":
            raise RuntimeError(f"{path} was written by a run without fsdp; resume it with the same strategy")
        restore_weights(model, trainable)
        options = StateDictOptions(full_state_dict=True)  # every rank shards its own copy
        set_optimizer_state_dict(model, optimizer, opt["optimizer"], options=options)
    else:
        if keys != "indices":
            raise RuntimeError(f"{path} was written by an fsdp run; resume it with strategy fsdp")
        restore_weights(model, trainable)
        optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(opt["rng"])
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    state["path"] = str(path)
    return state


def push(path: Path, remote: str, keep: int | None = KEEP) -> str:
    """Mirror the checkpoint folder ``path`` to ``<remote>/<path.name>``; return that URI.

    Order makes it safe to read at any moment: an older manifest of the same folder goes first, then
    the files, then the new manifest. Remote ``step-N`` folders beyond the newest ``keep`` are deleted
    manifest first, for the same reason.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote)
    root = root.rstrip("/")
    dest = f"{root}/{path.name}"
    fs.invalidate_cache()
    if fs.exists(f"{dest}/{MANIFEST}"):  # the same step saved again (e.g. SIGTERM right after a save)
        fs.rm_file(f"{dest}/{MANIFEST}")
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name != MANIFEST)
    for file in files:
        fs.put_file(str(file), f"{dest}/{file.name}")
    owner = path.parent / OWNER_FILE
    if owner.exists():  # before the manifest: a pull never sees a whole checkpoint without its owner
        fs.put_file(str(owner), f"{root}/{OWNER_FILE}")
    fs.put_file(str(path / MANIFEST), f"{dest}/{MANIFEST}")
    if keep is not None:
        for _, old in remote_complete(remote)[:-keep]:
            fs.rm_file(f"{old}/{MANIFEST}")
            fs.rm(old, recursive=True)
    return f"{remote.rstrip('/')}/{path.name}"


def remote_complete(remote: str) -> list[tuple[int, str]]:
    """(step, fsspec path) of every remote ``step-N`` folder that has its manifest, oldest first."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote)
    fs.invalidate_cache()
    if not fs.exists(root):
        return []
    found = []
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if re.fullmatch(r"step-\d+", name) and fs.exists(f"{entry}/{MANIFEST}"):
            found.append((int(name.split("-")[1]), entry.rstrip("/")))
    return sorted(found)


def pull_latest(remote: str, ckpt_dir: Path) -> str | None:
    """Download the newest complete remote checkpoint when it is newer than every local one.

    Returns the URI it came from (None: the local checkpoints are as new, or there is none). The copy
    lands in a ``.tmp-*`` folder, is checked against the manifest and is renamed into place when whole;
    a remote folder that does not match its manifest is skipped for the next older one. ``best/`` (early
    stopping) comes along when there is no local one.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote)
    if not _same_owner(fs, root, ckpt_dir):
        return None
    local = complete(ckpt_dir)
    newest_local = int(local[-1].name.split("-")[1]) if local else -1
    pulled = None
    for step, path in reversed(remote_complete(remote)):
        if step <= newest_local:
            break
        if _download(fs, path, ckpt_dir, f"step-{step}"):
            pulled = f"{remote.rstrip('/')}/step-{step}"
            break
    best = f"{root.rstrip('/')}/best"
    if pulled and not (ckpt_dir / "best").exists() and fs.exists(f"{best}/{MANIFEST}"):
        _download(fs, best, ckpt_dir, "best")
    return pulled


def _same_owner(fs: Any, root: str, ckpt_dir: Path) -> bool:
    """Remote checkpoints count only when the run that pulls them wrote them (see ``claim``): a
    FineTuneJob re-created under the same name and s3:// output must not resume a deleted one's run."""
    remote_owner = f"{root.rstrip('/')}/{OWNER_FILE}"
    local_owner = ckpt_dir / OWNER_FILE
    fs.invalidate_cache()
    if not fs.exists(remote_owner):
        if remote_complete_any(fs, root):
            log.warning("ignoring remote checkpoints in %s: no %s says which run wrote them", root, OWNER_FILE)
            return False
        return True
    theirs = json.loads(fs.cat_file(remote_owner))
    mine = json.loads(local_owner.read_text()) if local_owner.exists() else None
    if theirs != mine:
        log.warning(
            "ignoring remote checkpoints in %s: written by FineTuneJob uid %s run %s, not by this one (%s)",
            root,
            theirs.get("uid"),
            theirs.get("run"),
            mine,
        )
        return False
    return True


def remote_complete_any(fs: Any, root: str) -> bool:
    return fs.exists(root) and any(
        re.fullmatch(r"step-\d+", e.rstrip("/").rsplit("/", 1)[-1]) for e in fs.ls(root, detail=False)
    )


def _download(fs: Any, path: str, ckpt_dir: Path, name: str) -> bool:
    tmp = ckpt_dir / f".tmp-pull-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = json.loads(fs.cat_file(f"{path}/{MANIFEST}"))
        for file, size in manifest["files"].items():
            fs.get_file(f"{path}/{file}", str(tmp / file))
            if (tmp / file).stat().st_size != size:
                raise ValueError(f"{file}: {(tmp / file).stat().st_size} bytes, the manifest says {size}")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except (OSError, ValueError, KeyError) as e:
        log.warning("remote checkpoint %s is unusable (%s); trying an older one", path, e)
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    _fsync_dir(tmp)
    final = ckpt_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return True
