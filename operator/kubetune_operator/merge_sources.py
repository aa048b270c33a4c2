"""method merge: which artifact each `spec.merge.sources` entry stands for, or why the merge must wait.

Pure: `resolve` gets the source FineTuneJobs as the reconcile layer read them and returns what the
trainer reads (status.mergeSources, frozen into the run's spec ConfigMap) or the first reason to wait.
A source FineTuneJob is ready when its run Succeeded with an adapter artifact that passed evaluation,
the same guard a ModelDeployment applies before it serves one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune_api.stages import Merge
from kubetune_operator.conditions import get_condition


@dataclass(frozen=True)
class Resolution:
    sources: list[dict[str, Any]]  # status.mergeSources: {name?, run?, uri, digest?, weight}, in spec order
    waiting: list[str]  # one sentence per source that is not ready; empty when the merge may start

    @property
    def message(self) -> str:
        return "waiting for merge sources: " + "; ".join(self.waiting)


def referenced(merge: Merge) -> list[str]:
    """The FineTuneJobs the merge reads, in spec order."""
    return [s.fine_tune_job_ref.name for s in merge.sources if s.fine_tune_job_ref is not None]


def resolve(merge: Merge, finetunejobs: Mapping[str, dict[str, Any] | None]) -> Resolution:
    """``finetunejobs``: each referenced name -> that FineTuneJob (None when it does not exist).

    >>> m = Merge.model_validate({"sources": [{"uri": "/a"}, {"fineTuneJobRef": {"name": "b"}}]})
    >>> resolve(m, {"b": None}).waiting
    ['spec.merge.sources[1]: FineTuneJob b not found']
    """
    sources, waiting = [], []
    for i, s in enumerate(merge.sources):
        if s.fine_tune_job_ref is None:
            sources.append({"uri": s.uri, "weight": s.weight})
            continue
        name = s.fine_tune_job_ref.name
        ftj = finetunejobs.get(name)
        why = _not_ready(name, ftj)
        if why is not None:
            waiting.append(f"spec.merge.sources[{i}]: {why}")
            continue
        assert ftj is not None
        st = ftj["status"]
        artifact = st["artifact"]
        sources.append(
            {
                "name": name,
                "run": st.get("run"),
                "uri": artifact["uri"],
                "digest": artifact.get("digest"),
                "weight": s.weight,
            }
        )
    return Resolution(sources, waiting)


def _not_ready(name: str, ftj: dict[str, Any] | None) -> str | None:
    if ftj is None:
        return f"FineTuneJob {name} not found"
    st = ftj.get("status") or {}
    run, phase = st.get("run"), st.get("phase")
    if not run:
        return f"FineTuneJob {name} has not started a run"
    if phase != "Succeeded":
        return f"FineTuneJob {name} run {run} is {phase or 'not started'}, not Succeeded"
    artifact = st.get("artifact") or {}
    if not artifact.get("uri"):
        return f"FineTuneJob {name} run {run} recorded no artifact"
    if artifact.get("kind", "adapter") != "adapter":
        return f"FineTuneJob {name} run {run} produced a whole model ({artifact['kind']}), not a LoRA adapter"
    gate = get_condition(st.get("conditions"), "EvalPassed")
    if st.get("evalPassed") is not True or (gate is not None and gate.get("status") != "True"):
        reason = (gate or {}).get("reason")
        detail = "has no evaluation gates" if reason == "NoGates" else "did not pass evaluation"
        return f"FineTuneJob {name} run {run} {detail}"
    return None
