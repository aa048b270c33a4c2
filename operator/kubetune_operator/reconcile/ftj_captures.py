"""What a new FineTuneJob run reads from a ModelDeployment (spec.dataset.captures' location, the judge's
Service for spec.evaluation.judge.modelDeploymentRef); record why a run cannot start.

Room: the reconcile layer (kube I/O through `Kube`); the decision itself is `kubetune_operator.captures`'.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator import api, captures, judge_target, lineage, specs
from kubetune_operator.kube import Kube, now_iso
from kubetune_operator.reconcile.status_writes import patch_and_tell


def resolve(
    kube: Kube, ftj: dict[str, Any], spec: specs.FineTuneJobSpec, generation: int, keep_phase: bool
) -> captures.CaptureSource | captures.Unavailable | None:
    """spec.dataset.captures: the location to read, or Unavailable after recording (once) why not."""
    ref = ((spec.captures or {}).get("modelDeploymentRef") or {}).get("name")
    md = kube.get_custom(api.MODELDEPLOYMENTS, ftj["metadata"]["namespace"], ref) if ref else None
    found = captures.resolve(spec.captures, md)
    if isinstance(found, captures.Unavailable):
        patch = captures.unavailable_patch(ftj.get("status") or {}, found, generation, now_iso(), keep_phase)
        patch_and_tell(kube, ftj, patch, "Warning", found.reason, found.message)
    return found


def resolve_judge(
    kube: Kube, ftj: dict[str, Any], spec: specs.FineTuneJobSpec, generation: int, keep_phase: bool
) -> str | captures.Unavailable | None:
    """spec.evaluation.judge.modelDeploymentRef: its stable Service URL, or Unavailable after recording why not."""
    ns = ftj["metadata"]["namespace"]
    md = kube.get_custom(api.MODELDEPLOYMENTS, ns, spec.judge_ref) if spec.judge_ref else None
    found = judge_target.resolve(spec.judge_ref, md, ns)
    if isinstance(found, captures.Unavailable):
        patch = judge_target.unavailable_patch(ftj.get("status") or {}, found, generation, now_iso(), keep_phase)
        patch_and_tell(kube, ftj, patch, "Warning", found.reason, found.message)
    return found


def run_lineage(init: lineage.ParentArtifact | None, capture: captures.CaptureSource | None) -> dict[str, Any] | None:
    """status.lineage as a run starts: the parent artifact it starts from, and the captures it reads."""
    out: dict[str, Any] = {"parent": init.status()} if init is not None else {}
    if capture is not None:
        out["capturesUri"] = capture.uri
    return out or None
