"""Two-stage training: the artifact a run starts from (`spec.initFrom`), found and checked before training.

Room: the trainer. `resolve` turns `spec.initFrom` into an `InitArtifact` (a local directory, its kind
and digest, the parent run it came from); `check_method` refuses a method that cannot continue it. Both
run in `recipe.setup`, before any data or model is loaded. With `initFrom.fineTuneJobRef` the operator
has already picked the parent's artifact and written it beside the spec in the ConfigMap
(``initArtifact``: uri, digest, kind, parent {name, run}); with `initFrom.uri` the trainer reads it itself.

    kind adapter (a peft directory: adapter_config.json)  -> loaded as trainable and trained further
    kind model   (config.json + weights: full / merged)   -> used as the base model, tokenizer included
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer import uris
from kubetune_trainer.config import ConfigError, JobConfig

# The peft adapter types a method can go on training (peft's PeftType values).
CONTINUES = {"lora": "LORA", "qlora": "LORA", "ia3": "IA3", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}


@dataclass(frozen=True)
class InitArtifact:
    uri: str  # as the spec or the operator named it
    path: Path  # local directory
    kind: str  # "adapter" or "model"
    digest: str  # export.directory_digest of the directory as it was read
    peft_type: str | None  # adapters: LORA, IA3, PREFIX_TUNING, PROMPT_TUNING
    parent: dict[str, Any] | None  # {"name", "run"} with fineTuneJobRef; None for a uri


def resolve(cfg: JobConfig) -> InitArtifact | None:
    """The artifact `spec.initFrom` names, fetched when remote; None without initFrom."""
    from kubetune_trainer.export import directory_digest

    init = cfg.init_from
    if init is None:
        return None
    given = cfg.init_artifact or {}
    if init.fine_tune_job_ref is not None and not given.get("uri"):
        raise ConfigError(
            f"spec.initFrom.fineTuneJobRef {init.fine_tune_job_ref.name!r}: the operator resolves the parent's "
            "artifact into the spec it hands the trainer; to run locally, use spec.initFrom.uri"
        )
    uri = str(given.get("uri") or init.uri)
    path = _local(uri)
    digest = directory_digest(path)
    if given.get("digest") and given["digest"] != digest:
        raise ConfigError(
            f"spec.initFrom: {uri} has digest {digest}, but the parent recorded {given['digest']}: the artifact "
            "changed after its run finished"
        )
    if (path / "adapter_config.json").is_file():
        peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type")
        kind = "adapter"
    elif (path / "config.json").is_file():
        peft_type, kind = None, "model"
    else:
        raise ConfigError(f"spec.initFrom: {uri} holds neither a peft adapter nor model weights")
    return InitArtifact(uri, path, kind, digest, peft_type, given.get("parent"))


def check_method(cfg: JobConfig, init: InitArtifact | None) -> None:
    """An adapter is trained on by the method that made it (lora and qlora share one); a model suits any."""
    if init is None or init.kind == "model":
        return
    wanted = CONTINUES.get(cfg.policy_method)  # dpo/orpo continue the adapter their policy trains
    if wanted != init.peft_type:
        raise ConfigError(
            f"spec.initFrom: {init.uri} is a {init.peft_type} adapter, which spec.method {cfg.method} cannot "
            f"train further; use the method that made it, or start from model weights (the parent's "
            "output.mergeWeights result, or a full fine-tune)"
        )


def record(init: InitArtifact | None) -> dict[str, Any] | None:
    """The initFrom part of the lineage: {"uri", "digest", "kind", "parent": {"name", "run"} | None}."""
    if init is None:
        return None
    return {"uri": init.uri, "digest": init.digest, "kind": init.kind, "parent": init.parent}


def _local(uri: str) -> Path:
    kind = uris.scheme(uri)
    if kind == "hf":
        local = uris.hf_local_copy(uri)
        if local is None:
            raise ConfigError(f"spec.initFrom.uri: {uri}: no local copy (KUBETUNE_HF_ROOT)")
        return local
    if kind in ("file", "pvc"):
        path = uris.local_path(uri)
        if not path.is_dir():
            raise ConfigError(f"spec.initFrom: {uri} -> {path} is not a directory")
        return path
    try:
        return uris.fetch_remote(uri, uris.cache_dir() / "init")
    except OSError as e:
        raise ConfigError(f"spec.initFrom: {e}") from e
