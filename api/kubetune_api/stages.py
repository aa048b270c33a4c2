"""Runs built from other runs: spec.merge (combine finished adapters, train nothing) and spec.initFrom
(start from another run's artifact).

Room: the API package (see finetunejob.py, which composes the spec from this and its siblings).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune_api.common import INPUT_LOCATION, FineTuneJobRef, MaybeInClaim
from kubetune_api.rules import ApiModel, Rule, has, no_schema_default

# -- merge: combine finished adapters, train nothing (issue 12) ---------------------------------------
Combination = Literal["linear", "ties", "dare_linear", "dare_ties", "svd", "slerp"]
SPARSIFYING = ("ties", "dare_linear", "dare_ties")  # the combinations that trim each delta to merge.density
SIGN_ELECTING = ("ties", "dare_ties")  # the combinations that elect a sign per weight (merge.majoritySign)


class MergeSource(ApiModel):
    rules = (
        Rule(
            "has(self.fineTuneJobRef) != has(self.uri)",
            "each merge.sources entry needs exactly one of fineTuneJobRef or uri, not both and not neither",
            lambda s: has(s, "fine_tune_job_ref") != has(s, "uri"),
        ),
    )
    fine_tune_job_ref: FineTuneJobRef | None = Field(
        None, description="Its latest run that Succeeded and passed evaluation; the merge waits until there is one."
    )
    uri: MaybeInClaim = Field(
        None,
        max_length=1024,
        pattern=INPUT_LOCATION,
        description="A LoRA adapter folder: pvc://claim/path, s3://bucket/prefix, hf://org/name or an absolute path.",
    )
    weight: float = Field(1.0, ge=-100, le=100, description="Its share of the merge (negative subtracts it).")


class Merge(ApiModel):
    rules = (
        Rule(
            "self.combination != 'slerp' || size(self.sources) == 2",
            "merge.combination slerp needs exactly 2 merge.sources",
            lambda s: s.combination != "slerp" or len(s.sources) == 2,
        ),
        Rule(
            "self.combination != 'slerp' || self.sources.all(x, x.weight == 1.0)",
            "merge.sources[].weight does not apply to combination slerp (merge.t is the second source's share)",
            lambda s: s.combination != "slerp" or all(x.weight == 1.0 for x in s.sources),
        ),
        Rule(
            "!has(self.density) || self.combination in ['ties', 'dare_linear', 'dare_ties']",
            "merge.density is only valid with combination ties, dare_linear or dare_ties",
            lambda s: not has(s, "density") or s.combination in SPARSIFYING,
        ),
        Rule(
            "!has(self.majoritySign) || self.combination in ['ties', 'dare_ties']",
            "merge.majoritySign is only valid with combination ties or dare_ties",
            lambda s: not has(s, "majority_sign") or s.combination in SIGN_ELECTING,
        ),
        Rule(
            "!has(self.t) || self.combination == 'slerp'",
            "merge.t is only valid with combination slerp",
            lambda s: not has(s, "t") or s.combination == "slerp",
        ),
        Rule(
            "!has(self.rank) || self.combination != 'linear'",
            "merge.rank does not apply to combination linear (the exact sum keeps every source's rank)",
            lambda s: not has(s, "rank") or s.combination != "linear",
        ),
    )
    sources: list[MergeSource] = Field(min_length=2, max_length=8, description="The LoRA adapters to combine.")
    combination: Combination = Field(
        "linear",
        description=(
            "linear: the exact weighted sum of the adapters' weight deltas (ranks add up); ties, dare_linear, "
            "dare_ties: those papers' rules on the deltas; svd: the weighted sum of the deltas at merge.rank; "
            "slerp: spherical interpolation between two deltas. All but linear end in a rank-merge.rank adapter."
        ),
    )
    density: float | None = Field(
        None, gt=0, le=1, description="Share of each delta's weights kept (ties: largest, dare: random); 0.5 unset."
    )
    majority_sign: Literal["total", "frequency"] | None = Field(
        None, description="How the sign of each weight is elected: by total mass (unset) or by count."
    )
    rank: int | None = Field(
        None, ge=1, le=1024, description="Rank of the merged adapter (the sources' largest when unset)."
    )
    t: float | None = Field(None, ge=0, le=1, description="slerp: 0 is the first source, 1 the second (0.5 unset).")

    @property
    def density_or_default(self) -> float:
        return 0.5 if self.density is None else self.density

    @property
    def majority_sign_or_default(self) -> str:
        return self.majority_sign or "total"

    @property
    def t_or_default(self) -> float:
        return 0.5 if self.t is None else self.t


# --- stages: spec.initFrom (start from another run's artifact) ---------------------------------------


class InitFrom(ApiModel):
    rules = (
        Rule(
            "has(self.fineTuneJobRef) != has(self.uri)",
            "initFrom needs exactly one of fineTuneJobRef or uri, not both and not neither",
            lambda s: has(s, "fine_tune_job_ref") != has(s, "uri"),
        ),
        Rule(
            "!has(self.rerunOnParentSuccess) || !self.rerunOnParentSuccess || has(self.fineTuneJobRef)",
            "initFrom.rerunOnParentSuccess needs initFrom.fineTuneJobRef (a uri has no runs to follow)",
            lambda s: not s.rerun_on_parent_success or has(s, "fine_tune_job_ref"),
        ),
    )
    fine_tune_job_ref: FineTuneJobRef | None = Field(
        None,
        description=(
            "Start from this FineTuneJob's latest successful, EvalPassed artifact; this one waits (Pending, "
            "WaitingForParent) until there is one."
        ),
    )
    uri: MaybeInClaim = Field(
        None,
        max_length=1024,
        pattern=INPUT_LOCATION,
        description=(
            "A run's artifact directory: a peft adapter (trained on further by the same method family: lora/qlora, "
            "ia3, prefix, prompt) or whole model weights (used as the base model, tokenizer included)."
        ),
    )
    rerun_on_parent_success: bool = Field(
        False,
        description=(
            "Start a new run each time the parent has a new successful artifact. false: a parent's later runs "
            "start nothing; a spec change or the schedule takes the parent's latest artifact."
        ),
        json_schema_extra=no_schema_default,
    )
