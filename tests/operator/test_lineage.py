"""Two-stage training without a cluster: the wait/resolve/rerun decisions (kubetune_operator.lineage), the
reconcile steps that act on them against an in-memory stand-in for the API, and the ConfigMap the trainer reads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from kubetune_operator import api, lineage
from kubetune_operator.builders.trainer_job import build_spec_configmap
from kubetune_operator.reconcile import finetunejob
from kubetune_operator.settings import Settings
from kubetune_trainer.config import parse_job
from tests.operator.conftest import MINIMAL_FTJ

ARTIFACT = {"uri": "pvc://models/cpt/run-1/artifact", "digest": "sha256:one", "kind": "adapter"}


def parent_with(phase: str | None, **status: Any) -> dict[str, Any]:
    obj = copy.deepcopy(MINIMAL_FTJ)
    obj["metadata"].update(name="cpt", uid="uid-p")
    obj["spec"]["output"] = {"uri": "pvc://models/cpt"}
    obj["status"] = {"phase": phase, "run": 1, **status}
    return obj


SUCCEEDED = {"evalPassed": True, "artifact": ARTIFACT}


@pytest.mark.parametrize(
    ("parent", "says"),
    [
        (None, "parent FineTuneJob cpt does not exist (yet)"),
        (parent_with("Running"), "parent FineTuneJob cpt run 1 has not succeeded yet (phase Running)"),
        (parent_with("Failed", message="OOMKilled"), "parent FineTuneJob cpt run 1 failed: OOMKilled"),
        (parent_with("Succeeded", evalPassed=False, artifact=ARTIFACT), "is not EvalPassed (evalPassed False)"),
        (parent_with("Succeeded", artifact=ARTIFACT), "is not EvalPassed (evalPassed None)"),
        (parent_with("Succeeded", evalPassed=True), "succeeded without an artifact"),
    ],
)
def test_a_child_waits_and_says_why(parent, says):
    waiting = lineage.parent_artifact("cpt", "lora", parent)
    assert isinstance(waiting, lineage.Waiting) and says in waiting.message


def test_the_parents_artifact_is_resolved_with_its_run_digest_and_kind():
    got = lineage.parent_artifact("cpt", "lora", parent_with("Succeeded", **SUCCEEDED))
    assert got == lineage.ParentArtifact(ARTIFACT["uri"], "sha256:one", "adapter", "cpt", 1)
    assert got.status() == {
        "name": "cpt",
        "run": 1,
        "artifactUri": ARTIFACT["uri"],
        "digest": "sha256:one",
        "kind": "adapter",
    }


def test_another_method_family_takes_the_merged_weights_when_the_parent_has_them():
    merged = {**ARTIFACT, "mergedUri": "pvc://models/cpt/run-1/merged", "mergedDigest": "sha256:m"}
    parent = parent_with("Succeeded", evalPassed=True, artifact=merged)
    assert lineage.parent_artifact("cpt", "ia3", parent).kind == "model"
    assert lineage.parent_artifact("cpt", "ia3", parent).uri.endswith("/merged")
    assert lineage.parent_artifact("cpt", "qlora", parent).kind == "adapter"  # qlora continues a lora adapter


# --- reconcile against an in-memory API --------------------------------------------------------------------


class FakeKube:
    """The calls the FineTuneJob reconcile makes, on dicts: enough to see what it decides and writes."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.ftjs = {o["metadata"]["name"]: o for o in objs}
        self.created: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.status_patches = 0

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.ftjs.get(name))

    def patch_status(self, plural: str, namespace: str, name: str, patch: dict[str, Any], rv: Any = None) -> None:
        status = self.ftjs[name].setdefault("status", {})
        for k, v in patch.items():
            status.pop(k, None) if v is None else status.__setitem__(k, copy.deepcopy(v))
        self.status_patches += 1

    def create(self, manifest: dict[str, Any]) -> bool:
        if any(m["metadata"]["name"] == manifest["metadata"]["name"] for m in self.created):
            return False
        self.created.append(manifest)
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next((m for m in self.created if m["kind"] == "Job" and m["metadata"]["name"] == name), None)

    def delete_job(self, namespace: str, name: str) -> None:
        self.created = [m for m in self.created if m["metadata"]["name"] != name]

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], reason, message))

    def jobs(self) -> list[str]:
        return [m["metadata"]["name"] for m in self.created if m["kind"] == "Job"]


def child(rerun: bool = False) -> dict[str, Any]:
    obj = copy.deepcopy(MINIMAL_FTJ)
    obj["metadata"].update(name="sft", uid="uid-c")
    obj["spec"]["initFrom"] = {"fineTuneJobRef": {"name": "cpt"}, **({"rerunOnParentSuccess": True} if rerun else {})}
    return obj


def reconcile(kube: FakeKube, name: str = "sft") -> None:
    finetunejob.reconcile_spec(kube, kube.get_custom(api.FINETUNEJOBS, "ml", name), Settings())  # type: ignore[arg-type]


def follow(kube: FakeKube, name: str = "sft") -> None:
    finetunejob.follow_parent(kube, kube.get_custom(api.FINETUNEJOBS, "ml", name), Settings())  # type: ignore[arg-type]


def finish(kube: FakeKube, name: str, digest: str | None = None) -> None:
    """The run ends: what _mirror would write for a Succeeded, EvalPassed run."""
    status = kube.ftjs[name]["status"]
    status.update(phase="Succeeded", evalPassed=True)
    if digest:
        run = status["run"]
        status["artifact"] = {**ARTIFACT, "uri": f"pvc://models/{name}/run-{run}/artifact", "digest": digest}


def test_a_child_waits_without_a_job_then_starts_from_the_parents_artifact():
    kube = FakeKube(parent_with("Running"), child())
    reconcile(kube)
    status = kube.ftjs["sft"]["status"]
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert (status["phase"], running["reason"]) == ("Pending", "WaitingForParent")
    assert "cpt run 1 has not succeeded yet" in running["message"] and kube.jobs() == []
    patches = kube.status_patches
    follow(kube)  # the timer again, nothing new: no write, no event
    assert kube.status_patches == patches and len(kube.events) == 1

    kube.ftjs["cpt"]["status"].update(phase="Succeeded", **SUCCEEDED)
    follow(kube)
    status = kube.ftjs["sft"]["status"]
    assert kube.jobs() == ["sft-run-1"] and status["run"] == 1
    assert status["lineage"] == {
        "parent": lineage.ParentArtifact(ARTIFACT["uri"], "sha256:one", "adapter", "cpt", 1).status()
    }
    assert not any(c.get("reason") == "WaitingForParent" for c in status["conditions"])
    cm = next(m for m in kube.created if m["kind"] == "ConfigMap")
    frozen = yaml.safe_load(cm["data"][api.SPEC_FILE])
    assert frozen["initArtifact"]["uri"] == ARTIFACT["uri"] and frozen["initArtifact"]["parent"] == {
        "name": "cpt",
        "run": 1,
    }
    job = next(m for m in kube.created if m["kind"] == "Job")
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert "models" in claims  # the parent's claim is mounted
    assert kube.events[-1][1] == "Created" and "from cpt run 1" in kube.events[-1][2]


@pytest.mark.parametrize("rerun", [False, True])
def test_a_parents_new_run_restarts_only_a_child_that_follows_it(rerun):
    kube = FakeKube(parent_with("Succeeded", **SUCCEEDED), child(rerun))
    reconcile(kube)
    finish(kube, "sft")
    before = copy.deepcopy(kube.ftjs["sft"]["status"])
    kube.ftjs["cpt"]["status"].update(
        run=2, artifact={**ARTIFACT, "uri": "pvc://models/cpt/run-2/artifact", "digest": "sha256:two"}
    )
    follow(kube)
    follow(kube)  # again (a timer and an event at once, or after a crash): still one new run
    status = kube.ftjs["sft"]["status"]
    if not rerun:
        assert status == before and kube.jobs() == ["sft-run-1"]
        return
    assert kube.jobs() == ["sft-run-1", "sft-run-2"] and status["run"] == 2
    assert status["lineage"]["parent"]["run"] == 2 and status["lineage"]["parent"]["digest"] == "sha256:two"
    assert [e[1] for e in kube.events].count("ParentUpdated") == 1


def test_a_spec_change_takes_the_parents_latest_artifact_and_a_recreated_job_keeps_its_own():
    kube = FakeKube(parent_with("Succeeded", **SUCCEEDED), child())
    reconcile(kube)
    kube.ftjs["cpt"]["status"].update(
        run=2, artifact={**ARTIFACT, "uri": "pvc://models/cpt/run-2/artifact", "digest": "sha256:two"}
    )
    kube.delete_job("ml", "sft-run-1")  # gone before the operator saw it start
    reconcile(kube)
    assert kube.ftjs["sft"]["status"]["lineage"]["parent"]["run"] == 1  # recreated from what run 1 recorded
    kube.ftjs["sft"]["spec"]["training"] = {"epochs": 2}
    reconcile(kube)
    assert kube.ftjs["sft"]["status"]["run"] == 2 and kube.ftjs["sft"]["status"]["lineage"]["parent"]["run"] == 2


def test_a_child_naming_itself_is_invalid():
    me = child()
    me["spec"]["initFrom"]["fineTuneJobRef"]["name"] = "sft"
    kube = FakeKube(me)
    reconcile(kube)
    assert (
        kube.ftjs["sft"]["status"]["phase"] == "Failed"
        and "names this FineTuneJob itself" in kube.ftjs["sft"]["status"]["message"]
    )


def test_the_trainer_reads_the_init_artifact_the_builder_writes():
    init = lineage.ParentArtifact(ARTIFACT["uri"], "sha256:one", "adapter", "cpt", 1)
    cm = build_spec_configmap(child(), 1, init_artifact=init.for_trainer())
    cfg = parse_job(yaml.safe_load(cm["data"][api.SPEC_FILE]))
    assert cfg.init_artifact == init.for_trainer() and cfg.init_from is not None
    plain = parse_job(yaml.safe_load(build_spec_configmap(child(), 1)["data"][api.SPEC_FILE]))
    assert plain.init_artifact is None


def test_the_trainers_lineage_completes_status_lineage():
    from kubetune_operator import job_state

    state = job_state.RunState(job_state.SUCCEEDED, "Completed", "done")
    current = {"phase": "Running", "lineage": {"parent": {"name": "cpt", "run": 1, "artifactUri": "/a"}}}
    result = {"phase": "Succeeded", "lineage": {"initFrom": {"digest": "sha256:x"}, "datasetSha256": "sha256:d"}}
    patch = job_state.status_for_run(current, state, 1, "now", result)
    assert patch["lineage"] == {
        "parent": {"name": "cpt", "run": 1, "artifactUri": "/a", "digest": "sha256:x"},
        "datasetSha256": "sha256:d",
    }
