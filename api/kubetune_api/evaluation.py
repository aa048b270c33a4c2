"""A FineTuneJob's spec.evaluation: the metrics computed on held-out data and the gates that decide EvalPassed.

Room: the API package (see finetunejob.py, which composes the spec from this and its siblings).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune_api.common import MaybeInClaim
from kubetune_api.rules import ApiModel, Rule, no_schema_default

Metric = Literal["perplexity", "exactMatch", "contains", "preferenceAccuracy"]


class Gates(ApiModel):
    max_perplexity: float | None = Field(None, gt=0)
    min_exact_match: float | None = Field(None, ge=0, le=1)
    max_eval_loss: float | None = Field(None, gt=0)
    min_preference_accuracy: float | None = Field(
        None, ge=0, le=1, description="dpo/orpo: share of held-out pairs where the model prefers the chosen response."
    )

    def any_set(self) -> bool:
        return any(
            v is not None
            for v in (self.max_perplexity, self.min_exact_match, self.max_eval_loss, self.min_preference_accuracy)
        )


def _default_metrics() -> list[Metric]:
    return ["perplexity", "exactMatch"]


class Evaluation(ApiModel):
    rules = (
        Rule(
            "!has(self.gates) || !has(self.gates.maxPerplexity) || 'perplexity' in self.metrics",
            "evaluation.gates.maxPerplexity needs perplexity in evaluation.metrics",
            lambda s: s.gates.max_perplexity is None or "perplexity" in s.metrics,
        ),
        Rule(
            "!has(self.gates) || !has(self.gates.minExactMatch) || 'exactMatch' in self.metrics",
            "evaluation.gates.minExactMatch needs exactMatch in evaluation.metrics",
            lambda s: s.gates.min_exact_match is None or "exactMatch" in s.metrics,
        ),
        Rule(
            "!has(self.gates) || !has(self.gates.minPreferenceAccuracy) || 'preferenceAccuracy' in self.metrics",
            "evaluation.gates.minPreferenceAccuracy needs preferenceAccuracy in evaluation.metrics",
            lambda s: s.gates.min_preference_accuracy is None or "preferenceAccuracy" in s.metrics,
        ),
    )
    golden_dataset_uri: MaybeInClaim = Field(None, max_length=1024)
    metrics: list[Metric] = Field(
        default_factory=_default_metrics,
        max_length=8,
        json_schema_extra={"default": ["perplexity", "exactMatch"]},
    )
    max_new_tokens: int = Field(32, ge=1, le=4096)
    require_gates: bool = Field(
        True,
        description=(
            "True when unset: a run without gates is not EvalPassed (Unknown, reason NoGates), so a "
            "ModelDeployment never rolls it out. false opts out on purpose: EvalPassed=True with reason Ungated "
            "and a Warning event."
        ),
        json_schema_extra=no_schema_default,
    )
    gates: Gates = Field(default_factory=Gates, description="Thresholds that decide the EvalPassed condition.")
