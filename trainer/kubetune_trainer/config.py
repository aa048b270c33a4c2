"""The FineTuneJob spec as the trainer reads it: the API model itself (kubetune_api), parsed once.

Every field, default and cross-field rule lives in the API model, which the CRD is generated from:
the trainer accepts exactly what the apiserver accepts, and a spec that breaks the API raises
`ConfigError` naming the field (``spec.lora.alpha: ...``) before any data or model is touched. What
only the trainer can know (is there a CUDA GPU here?) is `check_runtime`'s.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, PrivateAttr

from kubetune_api.dataset import Cleaning as CleaningConfig
from kubetune_api.dataset import Dataset as DatasetConfig
from kubetune_api.dataset import DatasetFields as FieldsConfig
from kubetune_api.dataset import Mix as MixConfig
from kubetune_api.dataset import Split as SplitConfig
from kubetune_api.evaluation import Evaluation as EvaluationConfig
from kubetune_api.evaluation import Gates as GatesConfig
from kubetune_api.finetunejob import BaseModelSource as BaseModelConfig
from kubetune_api.finetunejob import Distributed as DistributedConfig
from kubetune_api.finetunejob import EarlyStopping as EarlyStoppingConfig
from kubetune_api.finetunejob import FineTuneJobSpec
from kubetune_api.finetunejob import Lora as LoraConfig
from kubetune_api.finetunejob import Output as OutputConfig
from kubetune_api.finetunejob import PromptTuning as PromptTuningConfig
from kubetune_api.finetunejob import Quantization as QuantizationConfig
from kubetune_api.finetunejob import Training as TrainingConfig
from kubetune_api.parse import SpecError, parse

__all__ = [
    "BaseModelConfig",
    "CleaningConfig",
    "ConfigError",
    "DatasetConfig",
    "DistributedConfig",
    "EarlyStoppingConfig",
    "EvaluationConfig",
    "FieldsConfig",
    "GatesConfig",
    "JobConfig",
    "LoraConfig",
    "MixConfig",
    "OutputConfig",
    "PromptTuningConfig",
    "QuantizationConfig",
    "SplitConfig",
    "TrainingConfig",
    "parse_job",
    "to_dict",
]


class ConfigError(ValueError):
    """The spec cannot be run; the message names the offending field."""


class JobConfig(FineTuneJobSpec):
    """The spec, plus whose run it is (the FineTuneJob's metadata: not spec fields, so never parsed from it)."""

    _name: str = PrivateAttr("local")
    _namespace: str | None = PrivateAttr(None)
    _uid: str | None = PrivateAttr(None)
    _merge_sources: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _init_artifact: dict[str, Any] | None = PrivateAttr(None)
    _captures: dict[str, Any] | None = PrivateAttr(None)

    @property
    def name(self) -> str:
        """FineTuneJob metadata.name."""
        return self._name

    @property
    def namespace(self) -> str | None:
        return self._namespace

    @property
    def uid(self) -> str | None:
        """metadata.uid: whose run this is (checkpoints carry it)."""
        return self._uid

    @property
    def merge_sources(self) -> list[dict[str, Any]]:
        """method merge: the sources the operator resolved (status.mergeSources, frozen with the spec)."""
        return self._merge_sources

    @property
    def init_artifact(self) -> dict[str, Any] | None:
        """The parent artifact the operator resolved for spec.initFrom.fineTuneJobRef (the frozen object's
        ``initArtifact``: uri, digest, kind, parent {name, run}); None otherwise."""
        return self._init_artifact

    @property
    def captures(self) -> dict[str, Any] | None:
        """spec.dataset.captures as the operator resolved it (the frozen object's ``captures``: uri, runStart,
        modelDeployment); None for a run without the operator."""
        return self._captures


def parse_job(obj: dict[str, Any], cuda_available: bool | None = None) -> JobConfig:
    """Parse a whole FineTuneJob object (apiVersion, kind, metadata, spec) into a `JobConfig`.

    ``cuda_available`` is injectable for tests; by default torch is asked (only when it matters).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("spec"), dict):
        raise ConfigError("spec: the file must hold a FineTuneJob object with a 'spec' mapping")
    if obj.get("kind", "FineTuneJob") != "FineTuneJob":
        raise ConfigError(f"kind: expected FineTuneJob, got {obj.get('kind')!r}")
    try:
        cfg = parse(JobConfig, obj["spec"])
    except SpecError as err:
        raise ConfigError(str(err)) from None
    meta = obj.get("metadata") or {}
    cfg._name = str(meta.get("name") or "local")
    cfg._namespace = meta.get("namespace")
    cfg._uid = meta.get("uid")
    resolved = (obj.get("status") or {}).get("mergeSources") or []
    if not isinstance(resolved, list) or not all(isinstance(r, dict) for r in resolved):
        raise ConfigError("status.mergeSources: expected a list of {name, run, uri, digest} mappings")
    cfg._merge_sources = resolved
    init = obj.get("initArtifact")
    cfg._init_artifact = dict(init) if isinstance(init, dict) else None
    captures = obj.get("captures")
    cfg._captures = dict(captures) if isinstance(captures, dict) else None
    check_runtime(cfg, cuda_available)
    return cfg


def check_runtime(cfg: JobConfig, cuda_available: bool | None = None) -> None:
    """What the spec asks of this machine: 4/8-bit kernels and fp16 autocast need a CUDA GPU."""
    m, t = cfg.method, cfg.training
    if m != "qlora" and t.precision != "fp16":
        return
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        what = "spec.method: qlora" if m == "qlora" else "spec.training.precision: fp16"
        raise ConfigError(
            f"{what} needs a CUDA GPU (bitsandbytes 4/8-bit kernels / fp16 autocast); none is visible. "
            "Use method lora (or precision bf16/fp32) on CPU, or request a GPU in spec.resources."
        )


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON-ready camelCase view with every default filled in (used in the model card and split records)."""
    return cfg.model_dump(by_alias=True, mode="json")
