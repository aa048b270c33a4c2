"""A FineTuneJob's spec.evaluation: the metrics computed on held-out data, the per-example checks, the LLM
judge, and the gates that decide EvalPassed.

Room: the API package (see finetunejob.py, which composes the spec from this and its siblings).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from kubetune_api.common import MaybeInClaim, SecretKeyRef
from kubetune_api.dataset import ModelDeploymentRef
from kubetune_api.rules import ApiModel, Rule, has, no_schema_default

Metric = Literal["perplexity", "exactMatch", "contains", "preferenceAccuracy"]
CheckType = Literal["jsonValid", "regex", "exactMatch", "contains"]

DEFAULT_RUBRIC = (
    "You compare two answers to the same request. Prefer the answer that is correct, follows the request and "
    "agrees with the reference answer when one is given; do not prefer an answer for being longer or for "
    "coming first. Reply with exactly one of: A, B, tie."
)


class Gates(ApiModel):
    max_perplexity: float | None = Field(None, gt=0)
    min_exact_match: float | None = Field(None, ge=0, le=1)
    max_eval_loss: float | None = Field(None, gt=0)
    min_preference_accuracy: float | None = Field(
        None, ge=0, le=1, description="dpo/orpo: share of held-out pairs where the model prefers the chosen response."
    )
    min_judge_win_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "evaluation.judge: the least (wins + ties/2) / judged of the tuned model against the baseline. A judge "
            "that cannot be reached fails the gate (reason JudgeUnavailable)."
        ),
    )

    def any_set(self) -> bool:
        return any(
            v is not None
            for v in (
                self.max_perplexity,
                self.min_exact_match,
                self.max_eval_loss,
                self.min_preference_accuracy,
                self.min_judge_win_rate,
            )
        )


class Judge(ApiModel):
    """An OpenAI-compatible chat endpoint that compares the tuned model's answers with the baseline's."""

    rules = (
        Rule(
            "has(self.url) != has(self.modelDeploymentRef)",
            "evaluation.judge needs exactly one of url or modelDeploymentRef",
            lambda s: has(s, "url") != has(s, "model_deployment_ref"),
        ),
    )
    url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://",
        description="Base URL of the judge (POST <url>/v1/chat/completions), e.g. http://judge.llm.svc:8000.",
    )
    model_deployment_ref: ModelDeploymentRef | None = Field(
        None,
        description=(
            "The judge is this ModelDeployment (same namespace): the operator resolves it to its stable "
            "Service (http://<name>-stable.<namespace>.svc:<spec.port>) before any pod starts."
        ),
    )
    model: str | None = Field(
        None, max_length=253, description="The served model name sent in each request (the server's default if unset)."
    )
    rubric: str = Field(DEFAULT_RUBRIC, max_length=8192, description="The judge's system prompt.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Sent as 'Authorization: Bearer <key>'; passed to the pod by reference only."
    )
    baseline: Literal["base"] = Field(
        "base",
        description=(
            "What the tuned model is compared with: base, the starting point's answers (the base model; with "
            "spec.initFrom an adapter, the parent's). A ModelDeployment's stable adapter is not yet offered."
        ),
    )
    max_prompts: int = Field(50, ge=1, le=1000, description="Held-out prompts judged (each twice, in both orders).")
    timeout_seconds: int = Field(30, ge=1, le=600, description="Per judge request.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a failed request, with exponential backoff.")


class Check(ApiModel):
    """A per-example check of the golden-set answers; its pass rate is reported as metrics['check.<name>']."""

    rules = (
        Rule(
            "self.type != 'regex' || has(self.pattern)",
            "evaluation.checks: type regex needs a pattern",
            lambda s: s.type != "regex" or s.pattern is not None,
        ),
        Rule(
            "!(self.type in ['jsonValid', 'exactMatch']) || !has(self.pattern)",
            "evaluation.checks: pattern is only for types regex and contains",
            lambda s: s.type not in ("jsonValid", "exactMatch") or s.pattern is None,
        ),
    )
    name: str = Field(max_length=63, pattern=r"^[a-zA-Z][a-zA-Z0-9_-]*$")
    type: CheckType = Field(
        description=(
            "jsonValid: the answer parses as JSON; regex: pattern matches somewhere in the answer; exactMatch: the "
            "answer equals the reference (case, spacing and surrounding punctuation aside); contains: the answer "
            "contains pattern, or the reference when pattern is unset."
        )
    )
    pattern: str | None = Field(None, max_length=1024)
    min: float | None = Field(None, ge=0, le=1, description="A gate: the least rate that passes EvalPassed.")

    @model_validator(mode="after")
    def _pattern_compiles(self) -> Check:
        # CEL cannot compile a regular expression: the operator's parser reports it before any pod starts.
        if self.type == "regex" and self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(
                    f"evaluation.checks: {self.name}: pattern {self.pattern!r} is not a regular expression ({err})"
                ) from err
        return self


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
        Rule(
            "!has(self.gates) || !has(self.gates.minJudgeWinRate) || has(self.judge)",
            "evaluation.gates.minJudgeWinRate needs evaluation.judge",
            lambda s: s.gates.min_judge_win_rate is None or s.judge is not None,
        ),
        Rule(
            "!has(self.checks) || self.checks.all(c, self.checks.exists_one(d, d.name == c.name))",
            "evaluation.checks: each name may appear once",
            lambda s: len({c.name for c in s.checks}) == len(s.checks),
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
    checks: list[Check] = Field(
        default_factory=list,
        max_length=16,
        description="Per-example checks of the generated answers; a check with min is a gate.",
        json_schema_extra=no_schema_default,
    )
    judge: Judge | None = Field(
        None,
        description=(
            "LLM-as-judge: for each held-out prompt (up to maxPrompts) the tuned and the baseline answers are "
            "compared in both orders; verdicts that disagree count as ties. Results in status.judge and eval.json."
        ),
    )

    def any_gate(self) -> bool:
        """Whether anything decides EvalPassed: a gate, or a check with a min."""
        return self.gates.any_set() or any(c.min is not None for c in self.checks)
