"""spec.dataset.captures: which capture location a run reads, or why it cannot start.

Room: the operator's pure decisions (no API calls, no kopf). `resolve` gets the ModelDeployment that
`captures.modelDeploymentRef` names, as the reconcile layer read it (None when it does not exist), and
answers the location its servers capture to (its spec.capture.uri) or a reason and message for status.
The answer is frozen into the run's spec ConfigMap (`CaptureSource.for_trainer`), with the run's start
time: the trainer's `since` window ends there, so a retried pod reads the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune_api.capture import Capture
from kubetune_operator.conditions import waiting_patch

CAPTURES_READY = "CapturesReady"
RESOLVED = "CapturesResolved"
MD_NOT_FOUND = "ModelDeploymentNotFound"
CAPTURE_OFF = "CaptureNotEnabled"
FIELD = "spec.dataset.captures.modelDeploymentRef"


@dataclass(frozen=True)
class CaptureSource:
    uri: str
    model_deployment: str | None = None  # None when the spec named the uri itself

    def for_trainer(self, run_start: str) -> dict[str, Any]:
        """The spec ConfigMap's ``captures`` (kubetune_trainer.config.JobConfig.captures)."""
        out: dict[str, Any] = {"uri": self.uri, "runStart": run_start}
        if self.model_deployment:
            out["modelDeployment"] = self.model_deployment
        return out

    def message(self, run: int) -> str:
        source = f"ModelDeployment {self.model_deployment}'s captures" if self.model_deployment else "captures"
        return f"run {run} reads {source} at {self.uri}"


@dataclass(frozen=True)
class Unavailable:
    reason: str  # CamelCase, for the CapturesReady condition and the Event
    message: str


def resolve(captures: dict[str, Any] | None, md: dict[str, Any] | None) -> CaptureSource | Unavailable | None:
    """``captures``: the spec's dataset.captures (None: the dataset is a uri, nothing to resolve);
    ``md``: the ModelDeployment its modelDeploymentRef names, None when there is none.

    >>> resolve({"modelDeploymentRef": {"name": "support"}}, None).message
    'spec.dataset.captures.modelDeploymentRef: ModelDeployment support not found (create it, or name another)'
    >>> resolve({"modelDeploymentRef": {"name": "s"}}, {"spec": {"capture": {"uri": "pvc://caps/s"}}})
    CaptureSource(uri='pvc://caps/s', model_deployment='s')
    >>> resolve({"uri": "s3://caps/support"}, None)
    CaptureSource(uri='s3://caps/support', model_deployment=None)
    """
    if not captures:
        return None
    ref = (captures.get("modelDeploymentRef") or {}).get("name")
    if not ref:
        return CaptureSource(str(captures["uri"]))
    if md is None:
        return Unavailable(MD_NOT_FOUND, f"{FIELD}: ModelDeployment {ref} not found (create it, or name another)")
    raw = (md.get("spec") or {}).get("capture")
    try:
        # Read through the API model (its spec.capture), so a field renamed there is renamed here.
        capture = Capture.model_validate(raw) if raw is not None else None
    except ValidationError:
        capture = None  # the apiserver admitted none such; a stored spec older than a rule reads as off
    if capture is None:
        return Unavailable(
            CAPTURE_OFF,
            f"{FIELD}: ModelDeployment {ref} does not capture traffic (set its spec.capture.uri, or name the "
            "location in spec.dataset.captures.uri)",
        )
    return CaptureSource(capture.uri, ref)


def unavailable_patch(
    status: dict[str, Any], why: Unavailable, generation: int, now: str, keep_phase: bool
) -> dict[str, Any]:
    """The status that says why no run starts: CapturesReady False with the reason (conditions.waiting_patch)."""
    return waiting_patch(status, CAPTURES_READY, why.reason, why.message, generation, now, keep_phase)


def waits(status: dict[str, Any]) -> bool:
    """Whether the status says a run waits for its captures (a timer looks again)."""
    return any(c.get("type") == CAPTURES_READY and c.get("status") == "False" for c in status.get("conditions") or [])
