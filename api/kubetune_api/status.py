"""The status shapes of both kinds, as the operator and the trainer write them.

Room: the API package. These models give the CRD its status schema (and the API reference its
rows); the writers build plain dicts of this shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kubetune_api.common import Condition, conditions_field, timestamp
from kubetune_api.rules import ApiModel

#: The most loss points status.progress.history keeps; past it the trainer drops every other one.
HISTORY_POINTS = 200


class ProgressPoint(ApiModel):
    step: int | None = None
    loss: float | None = None
    eval_loss: float | None = None


class Progress(ApiModel):
    examples_per_step: float | None = Field(
        None,
        description=(
            "Training examples per optimizer step, averaged over an epoch: batchSize x gradientAccumulationSteps x "
            "training processes (set before the first step)."
        ),
    )
    tokens_per_step: float | None = Field(
        None, description="Tokens (padding not counted) per optimizer step, averaged over an epoch."
    )
    steps_per_epoch: int | None = Field(
        None, description="Optimizer steps per pass over the training split, as HF Trainer counts them."
    )
    step: int | None = None
    total_steps: int | None = None
    step_text: str | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    transfer: str | None = Field(
        None,
        description=(
            "The download (base model, dataset, adapter) or upload (artifact) under way, with its bytes so far; "
            "unset once it is over."
        ),
    )
    update_time: str | None = timestamp()
    history: list[ProgressPoint] | None = Field(
        None,
        max_length=HISTORY_POINTS,
        description=(
            "The current run's loss curve so far: one point per progress report, thinned to every other point "
            f"whenever it would pass {HISTORY_POINTS}, so it always spans the whole run "
            "(kubectl kubetune get ftj NAME --plot FILE.png draws it)."
        ),
    )


class Artifact(ApiModel):
    uri: str | None = None
    digest: str | None = None
    kind: Literal["adapter", "model"] | None = Field(
        None, description="adapter: served on top of the base model; model: a full fine-tune, served instead of it."
    )
    merged_uri: str | None = Field(
        None,
        description=(
            "With output.mergeWeights, the adapter folded into the base weights (a ModelDeployment serves this)."
        ),
    )
    merged_digest: str | None = None


class DataSourceCounts(ApiModel):
    """spec.dataset.captures: what one serving version's captures gave (records read, rows built, drops)."""

    uri: str | None = Field(None, description="The version's capture folder (<capture uri>/<version>).")
    version: str | None = None
    requests: int | None = Field(None, description="Request records read (after spec.dataset.captures.since).")
    feedback: int | None = Field(None, description="Feedback records read for them.")
    rows: int | None = Field(None, description="Rows this version gave the dataset, before cleaning.")
    dropped: dict[str, int] | None = Field(
        None,
        description=(
            "Records that gave no row, by reason: noFeedback, belowMinRating, unpaired (preference: no opposite "
            "rating for the prompt), otherEndpoint (a chat request with format instruction), beforeSince, "
            "afterRunStart, unmatchedFeedback (feedback for a response not captured), malformed, oversized; "
            "and usedBefore: train rows an earlier run of this FineTuneJob trained on."
        ),
    )


class DataCounts(ApiModel):
    rows_read: int | None = Field(
        None, description="Rows (lines) read from spec.dataset.uri; with captures, the rows built from them."
    )
    oversized_dropped: int | None = Field(None, description="Rows longer than dataset.cleaning.maxRowBytes.")
    empty_dropped: int | None = Field(None, description="Rows with an empty text field.")
    too_short_dropped: int | None = Field(None, description="Rows shorter than cleaning.minChars.")
    too_long_dropped: int | None = Field(None, description="Rows longer than cleaning.maxChars.")
    duplicates_dropped: int | None = Field(None, description="Exact duplicates.")
    near_duplicates_dropped: int | None = Field(None, description="Duplicates up to case, whitespace and punctuation.")
    outliers_dropped: int | None = Field(None, description="Length outliers (cleaning.dropOutliers).")
    used_before_dropped: int | None = Field(
        None, description="spec.dataset.captures: train rows an earlier run of this FineTuneJob trained on."
    )
    rows_kept: int | None = Field(None, description="Rows left after cleaning.")
    train: int | None = None
    validation: int | None = None
    test: int | None = None
    sources: list[DataSourceCounts] | None = Field(
        None, max_length=64, description="spec.dataset.captures: per serving version, rows given and dropped."
    )


class MergeSourceStatus(ApiModel):
    """One spec.merge.sources entry as the operator resolved it for the current run (and the trainer reads)."""

    name: str | None = Field(None, description="The source FineTuneJob; absent for a source given by uri.")
    run: int | None = Field(None, description="The source FineTuneJob's run whose artifact is merged.")
    uri: str | None = None
    digest: str | None = Field(None, description="The artifact digest the trainer checks its download against.")
    weight: float | None = None


class LineageParent(ApiModel):
    name: str | None = Field(None, description="The parent FineTuneJob (spec.initFrom.fineTuneJobRef).")
    run: int | None = Field(None, description="The parent's run whose artifact this run started from.")
    artifact_uri: str | None = None
    digest: str | None = None
    kind: Literal["adapter", "model"] | None = Field(
        None, description="adapter: trained on further; model: used as the base model weights."
    )


class Lineage(ApiModel):
    parent: LineageParent | None = Field(
        None, description="What the current run starts from (spec.initFrom); a uri has no name or run."
    )
    dataset_sha256: str | None = Field(None, description="The trainer's hash of spec.dataset.uri for this run.")
    mix_sha256: str | None = Field(None, description="The same for spec.dataset.mix.uri.")
    captures_uri: str | None = Field(
        None,
        description=(
            "spec.dataset.captures: the capture location the run read (a ModelDeployment's spec.capture.uri, "
            "resolved by the operator before the run started)."
        ),
    )


class JudgeResult(ApiModel):
    """spec.evaluation.judge: the tuned model against the baseline, each prompt judged in both orders."""

    judged: int | None = Field(None, description="Prompts judged (both orders answered).")
    wins: int | None = None
    ties: int | None = Field(None, description="Including prompts whose two verdicts disagreed.")
    losses: int | None = None
    win_rate: float | None = Field(None, description="(wins + ties/2) / judged.")
    position_consistency: float | None = Field(
        None, description="Share of judged prompts whose verdicts agreed when the answers swapped places."
    )
    mean_answer_chars_tuned: float | None = Field(None, description="Watch for length bias: the tuned answers' mean.")
    mean_answer_chars_baseline: float | None = None
    error: str | None = Field(None, description="Why the judge could not be used (reason JudgeUnavailable).")


class TrackingStatus(ApiModel):
    """Where the current run is in MLflow (spec.tracking, or the operator's default tracking URI)."""

    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    registered_model: str | None = None
    model_version: str | None = Field(None, description="The registered version of this run's artifact.")
    warning: str | None = Field(
        None, description="What tracking could not do (the tracker was unreachable, ...); training went on."
    )


class GroupStatus(ApiModel):
    """A multi-node run (spec.resources.nodes > 1): its gang of pods and how often it was started over."""

    nodes: int | None = Field(None, description="Pods in the gang (spec.resources.nodes).")
    engine: Literal["indexedJob", "jobSet", "trainJob"] | None = Field(
        None, description="What runs the gang (spec.training.distributed.engine, or the operator's default)."
    )
    ready_pods: int | None = Field(None, description="Pods of the gang that are Ready now.")
    restarts: int | None = Field(
        None,
        description=(
            "Times the current run's whole gang was started over after a pod failed (engine indexedJob); each "
            "uses one of spec.backoffLimit."
        ),
    )
    preemptions: int | None = Field(
        None,
        description=(
            "Times the gang was started over because a pod was preempted or evicted (DisruptionTarget); these do "
            "not use spec.backoffLimit."
        ),
    )
    last_restart_reason: str | None = Field(
        None, description="Why the gang was last started over: PodFailed or Preempted."
    )
    last_restart_message: str | None = Field(None, description="The Job controller's words for that failure.")
    restarting_job: str | None = Field(
        None,
        description=(
            "While the gang is being started over: the uid of the failed Job being replaced (the new one is "
            "created once its pods are gone)."
        ),
    )
    restarting_since: str | None = timestamp("When the restart under way began.")


class FineTuneJobStatus(ApiModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended", "Skipped"] | None = Field(
        None,
        description=(
            "Skipped: the run had nothing new to train on (reason NoNewData, spec.dataset.captures); "
            "status.artifact stays the last one trained and a schedule goes on."
        ),
    )
    observed_generation: int | None = None
    run: int | None = None
    run_generation: int | None = Field(None, description="The spec generation the current run was started for.")
    run_spec_hash: str | None = Field(
        None, description="Hash of the spec fields that define a run; a change starts a new run."
    )
    job_name: str | None = None
    start_time: str | None = timestamp()
    completion_time: str | None = timestamp()
    last_schedule_time: str | None = timestamp()
    message: str | None = None
    progress: Progress | None = None
    metrics: dict[str, float] | None = Field(
        None,
        description=(
            "The tuned model's evaluation on the test split; spec.evaluation.checks' pass rates as check.<name>."
        ),
    )
    base_metrics: dict[str, float] | None = Field(
        None,
        description=(
            "The same evaluation of the starting point (the base model; with spec.initFrom an adapter, the parent's), "
            "beside metrics: what the run bought."
        ),
    )
    judge: JudgeResult | None = Field(None, description="spec.evaluation.judge: the last run's verdicts.")
    artifact: Artifact | None = None
    last_checkpoint: str | None = None
    eval_passed: bool | None = Field(
        None,
        description=(
            "Whether the run passed its evaluation gates; absent when it has none (EvalPassed Unknown, NoGates)."
        ),
    )
    data: DataCounts | None = Field(
        None,
        description=(
            "What reading and cleaning did to the dataset, whether or not the run went on to train. A drop count "
            "appears only when non-zero."
        ),
    )
    merge_sources: list[MergeSourceStatus] | None = Field(
        None, description="method merge: the adapters the current run combines, resolved before it started."
    )
    lineage: Lineage | None = Field(
        None, description="Where this run's weights and data came from (spec.initFrom, the dataset's hash)."
    )
    tracking: TrackingStatus | None = Field(
        None, description="The run in MLflow; a TrackingDegraded condition is True while warning is set."
    )
    group: GroupStatus | None = Field(
        None, description="spec.resources.nodes > 1: the current run's gang of pods (absent for one node)."
    )
    conditions: list[Condition] | None = conditions_field()


class ManualAction(ApiModel):
    annotation: str | None = None
    value: str | None = None
    outcome: Literal["Used", "Ignored"] | None = None
    message: str | None = None
    time: str | None = timestamp()


def _nullable(description: str | None = None) -> Any:
    return Field(None, description=description, json_schema_extra={"nullable": True})


class AnalysisRecord(ApiModel):
    time: str | None = timestamp()
    step: int | None = None
    check: str | None = None
    query: str | None = None
    value: float | None = _nullable()
    low: float | None = _nullable("Lower bound of value when it is read from histogram buckets.")
    high: float | None = _nullable(
        "Upper bound of value when it is read from histogram buckets (absent when unbounded)."
    )
    threshold: str | None = None
    verdict: Literal["Pass", "Fail", "NoData", "Error", "Skipped"] | None = None
    message: str | None = None


class RegistryAction(ApiModel):
    op: Literal["setAlias", "deleteAlias", "setTag"] | None = None
    alias: str | None = None
    version: str | None = None
    key: str | None = None
    value: str | None = None


class RegistryStatus(ApiModel):
    """The served FineTuneJob's MLflow registered model, as the rollout keeps it in step (status.tracking)."""

    tracking_uri: str | None = None
    registered_model: str | None = None
    production_version: str | None = Field(None, description="The version the alias production points at.")
    canary_version: str | None = Field(None, description="The version the alias canary points at, during a canary.")
    pending: list[RegistryAction] | None = Field(
        None, max_length=32, description="Registry calls not made yet (the next reconcile makes them; retried)."
    )
    message: str | None = Field(None, description="Why the last attempt failed; the rollout does not wait on it.")
    last_attempt_time: str | None = timestamp()


class ModelDeploymentStatus(ApiModel):
    phase: Literal["Pending", "Stable", "Progressing", "Paused", "Promoted", "RolledBack", "Failed"] | None = None
    observed_generation: int | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    stable_adapter_uri: str | None = Field(
        None,
        description=(
            "What the stable pods serve beside the base model; '#kind=model' marks a whole model served instead of "
            "it, 'digest=' what its download is checked against."
        ),
    )
    canary_adapter_uri: str | None = Field(None, description="The same for the canary pods.")
    rolled_back_version: str | None = Field(
        None, description="A version that failed analysis; it is not retried until the spec changes again."
    )
    skipped_adapter_uri: str | None = Field(
        None, description="The last FineTuneJob artifact held back because its evaluation gates failed."
    )
    canary_weight: int | None = Field(None, description="The current step's nominal percent of traffic.")
    achieved_canary_weight: float | None = Field(
        None,
        description=(
            "Percent of requests the canary really gets: the pod ratio canary/(stable+canary) with traffic replicas "
            "(every pod Ready, load spread evenly), the HTTPRoute weight with gatewayAPI."
        ),
    )
    current_step: int | None = None
    step_start_time: str | None = timestamp()
    failures: int | None = None
    awaiting_promotion: bool | None = Field(
        None, description="All steps passed with autoPromote false; annotate kubetune.io/promote=<canary version>."
    )
    aborted_version: str | None = Field(None, description="The canary version that spec.canary.abort rolled back.")
    abort_observed: bool | None = Field(
        None, description="spec.canary.abort has been acted on; it aborts nothing more until it is set false again."
    )
    last_manual_action: ManualAction | None = Field(
        None,
        description=(
            "The last kubetune.io/approve-step, promote or retry annotation the operator used or ignored (it removes "
            "each)."
        ),
    )
    no_data_count: int | None = None
    canary_not_ready_since: str | None = timestamp(
        "When the canary's pods were first seen not Ready (cleared once Ready)."
    )
    message: str | None = None
    registry: RegistryStatus | None = Field(
        None,
        description=(
            "With a FineTuneJob whose run is registered in MLflow (its status.tracking): which versions the "
            "aliases production and canary point at, so the registry shows what is live."
        ),
    )
    analysis: list[AnalysisRecord] | None = Field(None, max_length=200)
    conditions: list[Condition] | None = conditions_field()
