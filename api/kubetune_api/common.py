"""Shapes both kinds share: locations, references to Secrets and ConfigMaps, pod placement, conditions.

Room: the API package. Pure models; nothing here talks to a cluster.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from kubetune_api.rules import ApiModel, Rule, has

CLAIM = "pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.*"
# Where a pod can read from or write to: a claim, an S3 prefix, or a path inside the image.
LOCATION = f"^({CLAIM}|s3://[^/]+/.*|/.*)$"
# Inputs of the trainer may also come from the hub (hf://org/name; a local copy wins when present).
INPUT_LOCATION = f"^({CLAIM}|s3://[^/]+/.*|hf://[^/]+/[^/]+.*|/.*)$"
DURATION = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"

# A pvc:// path cannot climb out of its claim (the trainer also resolves symlinks: uris.local_path).
_ESCAPES_CLAIM = "^pvc://[^/]+//|/[.][.](/|$)"
IN_CLAIM_MESSAGE = (
    "a pvc:// path stays inside its claim: no '..' segment and no '/' right after the claim name "
    "(pvc://claim/path/in/claim)"
)
# [registry[:port]/]repository[:tag][@digest], as the container runtime parses it.
IMAGE_REFERENCE = (
    "^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?"
    "[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    "(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
IMAGE_MESSAGE = (
    "image must be an image reference: [registry[:port]/]repository[:tag][@digest], e.g. "
    "ghcr.io/org/trainer:1.2 (lower-case repository)"
)


def _field_rule(cel: str, message: str, holds: Any) -> list[Any]:
    """A rule on one string field: CEL in the CRD beside the field, the same check in the parser."""

    def check(value: str | None) -> str | None:
        if value is not None and not holds(value):
            raise ValueError(message)
        return value

    return [
        AfterValidator(check),
        Field(json_schema_extra={"x-kubernetes-validations": [{"rule": cel, "message": message}]}),
    ]


_IN_CLAIM = _field_rule(
    f"!self.startsWith('pvc://') || !self.matches('{_ESCAPES_CLAIM}')",
    IN_CLAIM_MESSAGE,
    lambda v: not (v.startswith("pvc://") and re.search(_ESCAPES_CLAIM, v)),
)
_IMAGE = _field_rule(f"self.matches('{IMAGE_REFERENCE}')", IMAGE_MESSAGE, lambda v: re.search(IMAGE_REFERENCE, v))
# The rule wraps the whole (optional) type, so the field's own pattern and bounds stay on the string.
InClaim = Annotated[str, *_IN_CLAIM]
MaybeInClaim = Annotated[str | None, *_IN_CLAIM]
MaybeImage = Annotated[str | None, *_IMAGE]


def _matches(pattern: str) -> AfterValidator:
    """The apiserver applies an int-or-string field's pattern to its string form only."""

    def check(value: int | str) -> int | str:
        if isinstance(value, str) and not re.search(pattern, value):
            raise ValueError(f"String should match pattern '{pattern}'")
        return value

    return AfterValidator(check)


CPU, MEMORY = "^([0-9]+(\\.[0-9]+)?m?)$", "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
# A Kubernetes quantity: an integer or a string.
Quantity = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]
CpuQuantity = Annotated[int | str, _matches(CPU), WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": CPU})]
MemoryQuantity = Annotated[
    int | str, _matches(MEMORY), WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": MEMORY})
]
# Passed to the pod unchanged: its shape is core/v1's, which the apiserver checks on the pod.
Affinity = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "description": "A core/v1 Affinity, passed to the trainer pod unchanged.",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    ),
]


class FineTuneJobRef(ApiModel):
    """A FineTuneJob the resource builds on (an adapter to serve, a source to merge, a parent to start from)."""

    name: str = Field(max_length=253, description="A FineTuneJob in the same namespace.")


class LocalObjectRef(ApiModel):
    name: str = Field(max_length=253)
    optional: bool | None = None


class EnvFromSource(ApiModel):
    rules = (
        Rule(
            "has(self.secretRef) != has(self.configMapRef)",
            "each envFrom entry needs exactly one of secretRef or configMapRef",
            lambda s: has(s, "secret_ref") != has(s, "config_map_ref"),
        ),
    )
    prefix: str | None = Field(None, max_length=64, description="Prepended to every variable name.")
    secret_ref: LocalObjectRef | None = None
    config_map_ref: LocalObjectRef | None = None


class SecretKeyRef(ApiModel):
    """A key of a Secret, by reference: its value never appears in the spec, the status or the pod spec."""

    name: str = Field(max_length=253, description="A Secret in the FineTuneJob's namespace.")
    key: str = Field("token", max_length=253)


class Toleration(ApiModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ServingResources(ApiModel):
    """What each serving pod asks for and where it may run."""

    gpus: int = Field(1, ge=0, le=64)
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253)
    cpu: Quantity | None = None
    memory: Quantity | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(None, max_length=32)


class TrainerResources(ApiModel):
    """What each trainer pod asks for and where it may run."""

    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Pods (nodes) in the training gang, each with gpus GPUs; > 1 runs torchrun across them on "
            "training.distributed.engine, and a failed or preempted pod restarts the whole gang from its last "
            "checkpoint."
        ),
    )
    gpus: int = Field(1, ge=0, le=64, description="GPUs per node.")
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253)
    cpu: CpuQuantity | None = None
    memory: MemoryQuantity | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(None, max_length=32)
    affinity: Affinity | None = None
    priority_class_name: str | None = Field(None, max_length=253)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    type: str
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    observed_generation: int | None = None
    last_transition_time: str | None = Field(None, json_schema_extra={"format": "date-time"})


def conditions_field() -> Any:
    """`status.conditions`: a list keyed by type, as every Kubernetes API has it."""
    return Field(None, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


def timestamp(description: str | None = None) -> Any:
    return Field(None, description=description, json_schema_extra={"format": "date-time"})
