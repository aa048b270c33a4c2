"""Two-stage training: which artifact of a parent FineTuneJob a child starts from, and when it starts again.

Room: the operator's pure decisions (no API calls, no kopf). A child names its parent in
`spec.initFrom.fineTuneJobRef`; `parent_artifact` reads the parent object (or its absence) and answers
either the artifact to start from or why the child must wait. `rerun_due` says whether a parent's newer
artifact starts a new run of a child that follows it (`rerunOnParentSuccess`). Every answer is computed
from the two objects' status alone, so it is the same after an operator restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WAITING_FOR_PARENT = "WaitingForParent"
PARENT_UPDATED = "ParentUpdated"


@dataclass(frozen=True)
class ParentArtifact:
    """What a run starts from: a parent's run's artifact (name/run None for a plain initFrom.uri)."""

    uri: str
    digest: str | None = None
    kind: str | None = None  # "adapter" or "model"; None when the trainer decides (a uri)
    name: str | None = None
    run: int | None = None

    def status(self) -> dict[str, Any]:
        """status.lineage.parent."""
        out = {"name": self.name, "run": self.run, "artifactUri": self.uri, "digest": self.digest, "kind": self.kind}
        return {k: v for k, v in out.items() if v is not None}

    def for_trainer(self) -> dict[str, Any]:
        """The spec ConfigMap's initArtifact (kubetune_trainer.config.JobConfig.init_artifact)."""
        return {
            "uri": self.uri,
            "digest": self.digest,
            "kind": self.kind,
            "parent": {"name": self.name, "run": self.run},
        }

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> ParentArtifact | None:
        """What the current run started from, as `status` recorded it."""
        parent = (status.get("lineage") or {}).get("parent") or {}
        if not parent.get("artifactUri"):
            return None
        return cls(
            parent["artifactUri"], parent.get("digest"), parent.get("kind"), parent.get("name"), parent.get("run")
        )


@dataclass(frozen=True)
class Waiting:
    message: str


def _family(method: str) -> str:
    """Adapters one method can train further: lora and qlora share theirs."""
    return "lora" if method in ("lora", "qlora") else method


def parent_artifact(name: str, child_method: str, parent: dict[str, Any] | None) -> ParentArtifact | Waiting:
    """The parent's latest run's artifact when it Succeeded with EvalPassed; else why the child waits.

    An adapter the child's method cannot continue is swapped for the parent's merged weights when it has
    them (output.mergeWeights); otherwise the adapter is handed on and the trainer says why it cannot.

    >>> parent_artifact("cpt", "lora", None).message
    'parent FineTuneJob cpt does not exist (yet)'
    >>> done = {"spec": {"method": "lora"}, "status": {"phase": "Succeeded", "run": 2, "evalPassed": True,
    ...         "artifact": {"uri": "/m/run-2/artifact", "digest": "sha256:a", "kind": "adapter"}}}
    >>> parent_artifact("cpt", "qlora", done)
    ParentArtifact(uri='/m/run-2/artifact', digest='sha256:a', kind='adapter', name='cpt', run=2)
    """
    if parent is None:
        return Waiting(f"parent FineTuneJob {name} does not exist (yet)")
    status = parent.get("status") or {}
    phase, run = status.get("phase"), status.get("run")
    of = f"parent FineTuneJob {name}" + (f" run {run}" if run else "")
    if phase == "Failed":
        return Waiting(f"{of} failed: {status.get('message') or 'see its status'}")
    if phase != "Succeeded":
        return Waiting(f"{of} has not succeeded yet (phase {phase or 'none'})")
    if status.get("evalPassed") is not True:
        return Waiting(f"{of} succeeded but is not EvalPassed (evalPassed {status.get('evalPassed')})")
    artifact = status.get("artifact") or {}
    if not artifact.get("uri"):
        return Waiting(f"{of} succeeded without an artifact")
    kind = artifact.get("kind") or "adapter"
    parent_method = (parent.get("spec") or {}).get("method") or "lora"
    if kind == "adapter" and _family(parent_method) != _family(child_method) and artifact.get("mergedUri"):
        return ParentArtifact(artifact["mergedUri"], artifact.get("mergedDigest"), "model", name, run)
    return ParentArtifact(artifact["uri"], artifact.get("digest"), kind, name, run)


def rerun_due(follows: bool, status: dict[str, Any], latest: ParentArtifact | Waiting) -> bool:
    """Whether a parent's newer successful artifact starts a new run: only for a child that follows its parent
    (`rerunOnParentSuccess`), has started, has no live run (no overlap: checked again when it finishes), and
    started from another artifact than the parent's latest.

    >>> latest = ParentArtifact("/m/run-2/artifact", "sha256:b", "adapter", "cpt", 2)
    >>> old = {"run": 1, "phase": "Succeeded", "lineage": {"parent": {"artifactUri": "/m/run-1/artifact",
    ...        "digest": "sha256:a"}}}
    >>> live = {**old, "phase": "Running"}
    >>> rerun_due(True, old, latest), rerun_due(False, old, latest), rerun_due(True, live, latest)
    (True, False, False)
    """
    if not follows or not isinstance(latest, ParentArtifact) or not status.get("run"):
        return False
    if status.get("phase") not in ("Succeeded", "Failed", "Skipped"):
        return False
    current = ParentArtifact.from_status(status)
    return current is None or (current.digest, current.uri) != (latest.digest, latest.uri)


def waiting(status: dict[str, Any]) -> bool:
    """Whether the status says the FineTuneJob waits for its parent (read back after a restart)."""
    return any(
        c.get("reason") == WAITING_FOR_PARENT for c in status.get("conditions") or [] if c.get("type") == "Running"
    )


def with_result(current: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """status.lineage after a run: the operator's record of the parent, completed by what the trainer read.

    >>> with_result({"parent": {"artifactUri": "/a"}}, {"initFrom": {"digest": "sha256:x", "kind": "adapter"},
    ...             "datasetSha256": "sha256:d"})
    {'parent': {'artifactUri': '/a', 'digest': 'sha256:x', 'kind': 'adapter'}, 'datasetSha256': 'sha256:d'}
    """
    out = dict(current or {})
    init = result.get("initFrom") or {}
    if init:
        parent = dict(out.get("parent") or {"artifactUri": init.get("uri")})
        for key in ("digest", "kind"):
            if init.get(key) and not parent.get(key):
                parent[key] = init[key]
        out["parent"] = parent
    for key in ("datasetSha256", "mixSha256", "capturesUri"):
        if result.get(key):
            out[key] = result[key]
    return out
