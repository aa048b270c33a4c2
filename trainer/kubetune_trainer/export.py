"""Write the artifact (adapter or weights + tokenizer + model card), result.json, and upload if remote."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from kubetune_trainer import uris

LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors")


def library_versions() -> dict[str, str]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def directory_digest(path: Path) -> str:
    """sha256 over (relative path, content) of every file, in sorted order."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_artifact(
    model: Any, tokenizer: Any, card: dict[str, Any], out_dir: Path, state_dict: dict[str, Any] | None = None
) -> tuple[Path, str]:
    """Save into ``out_dir/artifact`` atomically (temp dir + rename); return (path, digest).

    ``state_dict``: the gathered weights when the model itself is sharded (fsdp); else the model's own.
    """
    final, tmp = out_dir / "artifact", out_dir / f".artifact-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(tmp, safe_serialization=True, **extra)
    tokenizer.save_pretrained(tmp)
    (tmp / "model_card.json").write_text(json.dumps(card, indent=1, default=str))
    digest = directory_digest(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final, digest


def write_merged(model: Any, tokenizer: Any, out_dir: Path) -> tuple[Path, str]:
    """Fold the adapter into the base weights (LoRA / IA3) and save a standalone model; (path, digest)."""
    merged = model.merge_and_unload()
    path = out_dir / "merged"
    shutil.rmtree(path, ignore_errors=True)
    merged.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, directory_digest(path)


def write_json(path: Path, data: dict[str, Any], compact: bool = False) -> Path:
    """Write-then-rename, so a reader never sees half a file. ``compact`` for bulk data (token ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1, default=str)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_result(out_dir: Path, result: dict[str, Any]) -> Path:
    """``result.json``: what the operator's local executor reads (phase, metrics, evalPassed, artifact)."""
    return write_json(out_dir / "result.json", result)


class OutputTaken(RuntimeError):
    """The run's output location already holds another FineTuneJob's finished run: never written over."""


def refuse_foreign_result(out_dir: Path, remote: str | None, owner: dict[str, str]) -> None:
    """Raise `OutputTaken` when ``result.json`` here (or at ``remote``) is a Succeeded run of another owner.

    A FineTuneJob deleted and re-created under the same name and output gets a new uid but the same
    ``run-1/``: training again there would replace the artifact whose digest the old run recorded (and a
    ModelDeployment may serve). Checked before anything is written. A result without an owner (written
    before owners were recorded) counts as foreign; a Failed result is no artifact and may be replaced.
    """
    # With a remote output the local folder is only a cache: the remote copy is what others read.
    text, where = None, f"{remote.rstrip('/')}/result.json" if remote else str(out_dir / "result.json")
    if remote:
        import fsspec

        fs, path = fsspec.core.url_to_fs(f"{remote.rstrip('/')}/result.json")
        text = fs.cat_file(path).decode() if fs.exists(path) else None
    elif (out_dir / "result.json").is_file():
        text = (out_dir / "result.json").read_text()
    if text is None:
        return
    result = json.loads(text)
    theirs = result.get("owner") or {}
    if result.get("phase") == "Succeeded" and theirs.get("uid") != owner.get("uid"):
        raise OutputTaken(
            f"spec.output.uri: {where} already holds the artifact of another FineTuneJob "
            f"(uid {theirs.get('uid', 'unrecorded')}, run {theirs.get('run', '?')}); nothing was written. "
            "Choose a new spec.output.uri, or move that run away first"
        )


def upload(local: Path, uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copy the files of the local output folder to the same paths under a remote (s3://) location.

    File by file: ``fs.put(folder, uri)`` copies the folder *into* ``uri`` when that already exists
    (e.g. holding the mirrored checkpoints). ``skip``: top-level names not to copy. ``result.json``
    goes last, so a reader that finds it finds the artifact it names.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    files = [f for f in local.rglob("*") if f.is_file() and f.relative_to(local).parts[0] not in skip]
    for file in sorted(files, key=lambda f: (f == local / "result.json", str(f))):
        fs.put_file(str(file), f"{path.rstrip('/')}/{file.relative_to(local).as_posix()}")


def artifact_uri(remote: str | None, local_out: Path, name: str = "artifact") -> str:
    """Where others should load ``name`` (artifact, merged) from: the uploaded copy, else pvc://claim/... or a path."""
    if remote:
        return remote.rstrip("/") + "/" + name
    return uris.to_uri(local_out / name)


TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


def write_termination_message(result: dict[str, Any], path: Path) -> bool:
    """Hand the result to the operator through the container's termination message at ``path``
    (`TrainerEnv.termination_log`).

    Only when the file exists, i.e. the kubelet created it. The summary keeps to the fields the
    operator reads, well under Kubernetes' 4 KiB.
    """
    if not path.exists():
        return False
    keys = (
        "phase",
        "reason",
        "metrics",
        "baseMetrics",
        "evalPassed",
        "artifact",
        "message",
        "data",
        "steps",
        "lineage",
        "judge",
        "tracking",
    )
    summary = {k: result[k] for k in keys if k in result}
    if "message" in summary:
        summary["message"] = str(summary["message"])[:1000]
    text = json.dumps(summary, separators=(",", ":"), default=str)
    if len(text.encode()) > TERMINATION_LIMIT:  # absurdly many metrics: keep what decides the outcome
        text = json.dumps(
            {k: summary[k] for k in ("phase", "reason", "evalPassed", "artifact", "tracking") if k in summary}
        )
    try:
        path.write_text(text)
    except OSError:
        return False
    return True
