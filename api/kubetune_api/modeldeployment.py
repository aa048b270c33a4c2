"""The ModelDeployment spec: serve a base model with an adapter; roll new versions out as gated canaries.

Room: the API package. The single source of the ModelDeployment API (CRD schema, API reference and
the operator's parser). Defaults are written here once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune_api.capture import Capture
from kubetune_api.common import (
    CLAIM,
    DURATION,
    LOCATION,
    EnvFromSource,
    FineTuneJobRef,
    MaybeImage,
    MaybeInClaim,
    ServingResources,
)
from kubetune_api.rules import ApiModel, Rule, has

NoDataPolicy = Literal["pause", "fail", "pass"]
ExtraArg = Annotated[str, Field(max_length=256)]
DEFAULT_STEPS = (5, 25, 50, 100)
SERVED_LOCATION = (
    "pvc://claim/path, an absolute path, or s3://bucket/prefix (downloaded into the pod by an init container)."
)


class ServedBaseModel(ApiModel):
    rules = (
        Rule(
            "has(self.name) != has(self.uri)",
            "baseModel needs exactly one of name (hub id) or uri, not both and not neither",
            lambda s: has(s, "name") != has(s, "uri"),
        ),
        Rule(
            "!has(self.cacheUri) || has(self.name)",
            "baseModel.cacheUri is the Hugging Face cache of a hub-id baseModel.name; a uri is read in place",
            lambda s: not has(s, "cache_uri") or has(s, "name"),
        ),
    )
    name: str | None = Field(
        None,
        max_length=256,
        description=(
            "Hugging Face hub id, loaded through the HF cache (HF_HOME: cacheUri, else the pod's scratch space)."
        ),
    )
    uri: MaybeInClaim = Field(None, max_length=1024, pattern=LOCATION, description=SERVED_LOCATION)
    revision: str | None = Field(None, max_length=128)
    trust_remote_code: bool = Field(
        False, description="vLLM's --trust-remote-code; the builtin server never runs a model's own code."
    )
    cache_uri: MaybeInClaim = Field(
        None,
        max_length=1024,
        pattern=f"^{CLAIM}$",
        description=(
            "pvc://claim/path that is the pods' Hugging Face cache (HF_HOME), for a hub-id base model: pods load "
            "from it and download into it on a miss (writable; ReadWriteMany across nodes). Pre-populated, with "
            "HF_HUB_OFFLINE=1 from envFrom, pods never reach the hub."
        ),
    )


class Adapter(ApiModel):
    rules = (
        Rule(
            "has(self.fineTuneJobRef) != has(self.uri)",
            "adapter needs exactly one of fineTuneJobRef or uri, not both",
            lambda s: has(s, "fine_tune_job_ref") != has(s, "uri"),
        ),
    )
    fine_tune_job_ref: FineTuneJobRef | None = None
    uri: MaybeInClaim = Field(None, max_length=1024, pattern=LOCATION, description=SERVED_LOCATION)
    name: str | None = Field(
        None,
        max_length=128,
        description=(
            "Name the adapter is served under (vLLM --lora-modules); a whole model from a FineTuneJob (full "
            "fine-tune, merged weights) is served under it too."
        ),
    )


class Builtin(ApiModel):
    extra_args: list[ExtraArg] | None = Field(
        None, max_length=64, description='Extra flags for the builtin server, e.g. [--max-new-tokens, "128"].'
    )


class Vllm(ApiModel):
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)
    max_lora_rank: int = Field(64, ge=1)
    extra_args: list[ExtraArg] | None = Field(None, max_length=64)


class ParentRef(ApiModel):
    name: str = Field(max_length=253)
    namespace: str | None = Field(None, max_length=63)
    section_name: str | None = Field(None, max_length=253)


class Gateway(ApiModel):
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=16)
    hostnames: list[Annotated[str, Field(max_length=253)]] | None = Field(None, max_length=16)


class Prometheus(ApiModel):
    address: str = Field(max_length=1024, pattern="^https?://.+")


class Query(ApiModel):
    rules = (
        Rule(
            "has(self.min) || has(self.max)",
            "a custom analysis query needs min or max",
            lambda s: s.min is not None or s.max is not None,
        ),
    )
    name: str = Field(max_length=63)
    query: str = Field(max_length=4096, description="PromQL; {{canary}} and {{stable}} expand to the pods' selectors.")
    min: float | None = None
    max: float | None = None
    no_data_policy: NoDataPolicy | None = None


class Analysis(ApiModel):
    enabled: bool = True
    prometheus: Prometheus | None = None
    min_requests: int = Field(50, ge=0, description="Canary requests in the interval before any verdict.")
    no_data_policy: NoDataPolicy = "pause"
    no_data_limit: int = Field(
        5, ge=0, description="Consecutive no-data analyses tolerated before noDataPolicy fail applies."
    )
    latency_p99_ratio: float = Field(1.2, gt=0, description="Max canary/stable P99 latency ratio.")
    max_gpu_memory_utilization: float = Field(0.95, gt=0, le=1)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_user_rating_drop: float | None = Field(
        None,
        gt=0,
        le=4,
        description=(
            "User ratings (1..5, posted to the servers' /v1/feedback) as an A/B check: the canary's mean rating over "
            "the interval may be at most this much below the stable version's. Unset: no rating check."
        ),
    )
    min_feedback: int = Field(
        10,
        ge=1,
        description=(
            "Ratings each of canary and stable needs in the interval before maxUserRatingDrop decides; with fewer "
            "the check has no data (noDataPolicy)."
        ),
    )
    queries: list[Query] | None = Field(None, max_length=20)


class Canary(ApiModel):
    rules = (
        Rule(
            "!has(self.steps) || (self.steps.isSorted()"
            " && self.steps.all(s, self.steps.filter(t, t == s).size() == 1))",
            "canary.steps must be strictly increasing percentages, e.g. [5, 25, 50, 100]",
            lambda s: all(a < b for a, b in zip(s.steps, s.steps[1:], strict=False)),
        ),
        Rule(
            "!has(self.analysis) || (has(self.analysis.enabled) && !self.analysis.enabled)"
            " || has(self.analysis.prometheus)",
            "canary.analysis.prometheus.address is required when analysis is enabled",
            lambda s: s.analysis is None or not s.analysis.enabled or s.analysis.prometheus is not None,
        ),
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_STEPS),
        min_length=1,
        max_length=20,
        json_schema_extra={"default": list(DEFAULT_STEPS)},
    )
    interval: str = Field(
        "1m", pattern=DURATION, description="Time at each step before analysis decides (Go duration, e.g. 30s, 2m)."
    )
    failure_limit: int = Field(0, ge=0, le=100, description="Failed analyses tolerated before rollback.")
    auto_promote: bool = Field(True, description="Promote after the last step without a human.")
    manual_gate: bool = Field(
        False,
        description=(
            "Pause before each step until annotation kubetune.io/approve-step=<version>/<weight> names it (used "
            "once, then removed)."
        ),
    )
    abort: bool = Field(
        False,
        description=(
            "Roll back the canary in flight when the operator first sees this true; a later version is not aborted "
            "until it is set false and true again."
        ),
    )
    progress_deadline: str = Field(
        "10m",
        pattern=DURATION,
        description=(
            "How long the canary's pods may stay not Ready (Go duration) before it is rolled back; steps do not "
            "advance meanwhile."
        ),
    )
    analysis: Analysis | None = Field(
        None, description="Prometheus checks at each step; without it, steps advance on time alone."
    )


class ModelDeploymentSpec(ApiModel):
    rules = (
        Rule(
            "self.traffic != 'gatewayAPI' || has(self.gateway)",
            "traffic gatewayAPI requires spec.gateway.parentRefs",
            lambda s: s.traffic != "gatewayAPI" or s.gateway is not None,
        ),
        # vLLM has no /v1/feedback: its pods take ratings only through the capture proxy, which
        # spec.capture adds. Without it the rating check could only ever say NoData.
        Rule(
            "self.runtime != 'vllm' || has(self.capture) || !has(self.canary.analysis)"
            " || !has(self.canary.analysis.maxUserRatingDrop)",
            "canary.analysis.maxUserRatingDrop with runtime vllm needs spec.capture (its proxy takes the feedback)",
            lambda s: (
                s.runtime != "vllm"
                or s.capture is not None
                or s.canary.analysis is None
                or s.canary.analysis.max_user_rating_drop is None
            ),
        ),
    )
    base_model: ServedBaseModel
    adapter: Adapter | None = Field(
        None, description="The adapter to serve; from a FineTuneJob's latest successful run or a uri."
    )
    runtime: Literal["builtin", "vllm"] = "builtin"
    env_from: list[EnvFromSource] | None = Field(
        None,
        max_length=16,
        description=(
            "Environment for the serving pods and their download init containers from Secrets or ConfigMaps, by "
            "reference (as a container's envFrom): e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
            "AWS_ENDPOINT_URL for s3:// models and adapters, HF_TOKEN, HF_HUB_OFFLINE."
        ),
    )
    image: MaybeImage = Field(None, max_length=512)
    port: int = Field(8000, ge=1, le=65535)
    replicas: int = Field(2, ge=1, le=1000)
    resources: ServingResources = Field(default_factory=ServingResources, json_schema_extra={"default": {}})
    builtin: Builtin = Field(default_factory=Builtin)
    vllm: Vllm = Field(default_factory=Vllm)
    traffic: Literal["replicas", "gatewayAPI"] = Field("replicas", description="How canary weight is applied.")
    gateway: Gateway | None = None
    canary: Canary = Field(default_factory=Canary, json_schema_extra={"default": {}})
    capture: Capture | None = Field(
        None, description="Record a sample of requests and responses, and accept feedback (POST /v1/feedback)."
    )
