"""method merge, without a cluster: resolving spec.merge.sources to artifacts, and what the trainer reads of it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kubetune_api.stages import Merge
from kubetune_operator import api
from kubetune_operator.builders.trainer_job import build_spec_configmap, build_trainer_job
from kubetune_operator.merge_sources import referenced, resolve
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec

MERGE = Merge.model_validate(
    {
        "sources": [
            {"fineTuneJobRef": {"name": "a"}, "weight": 0.7},
            {"uri": "pvc://adapters/style/artifact", "weight": 0.3},
            {"fineTuneJobRef": {"name": "b"}},
        ]
    }
)


def source(run: int = 2, phase: str = "Succeeded", passed: Any = True, **artifact: Any) -> dict[str, Any]:
    art = {"uri": f"pvc://models/a/run-{run}/artifact", "digest": "sha256:aa", "kind": "adapter", **artifact}
    gate = {"type": "EvalPassed", "status": "True" if passed else "False", "reason": "GatesPassed"}
    return {"status": {"run": run, "phase": phase, "artifact": art, "evalPassed": passed, "conditions": [gate]}}


def test_ready_sources_resolve_to_their_artifacts_in_spec_order() -> None:
    assert referenced(MERGE) == ["a", "b"]
    r = resolve(MERGE, {"a": source(), "b": source(run=1, digest="sha256:bb")})
    assert r.waiting == []
    assert r.sources == [
        {"name": "a", "run": 2, "uri": "pvc://models/a/run-2/artifact", "digest": "sha256:aa", "weight": 0.7},
        {"uri": "pvc://adapters/style/artifact", "weight": 0.3},
        {"name": "b", "run": 1, "uri": "pvc://models/a/run-1/artifact", "digest": "sha256:bb", "weight": 1.0},
    ]


@pytest.mark.parametrize(
    ("b", "why"),
    [
        (None, "spec.merge.sources[2]: FineTuneJob b not found"),
        ({"status": {}}, "FineTuneJob b has not started a run"),
        (source(phase="Running"), "FineTuneJob b run 2 is Running, not Succeeded"),
        (source(phase="Failed"), "FineTuneJob b run 2 is Failed, not Succeeded"),
        (source(passed=False), "FineTuneJob b run 2 did not pass evaluation"),
        (source(passed=None), "FineTuneJob b run 2 did not pass evaluation"),
        (source(kind="model"), "produced a whole model (model), not a LoRA adapter"),
        (source(uri=None), "FineTuneJob b run 2 recorded no artifact"),
    ],
)
def test_a_source_that_is_not_ready_is_named_with_why(b: dict[str, Any] | None, why: str) -> None:
    r = resolve(MERGE, {"a": source(), "b": b})
    assert len(r.waiting) == 1 and why in r.waiting[0] and r.message.startswith("waiting for merge sources: ")


def test_no_gates_says_so() -> None:
    b = source(passed=None)
    b["status"]["conditions"] = [{"type": "EvalPassed", "status": "Unknown", "reason": "NoGates"}]
    assert resolve(MERGE, {"a": source(), "b": b}).waiting == [
        "spec.merge.sources[2]: FineTuneJob b run 2 has no evaluation gates"
    ]


def ftj() -> dict[str, Any]:
    spec = {
        "baseModel": {"uri": "pvc://models/base"},
        "dataset": {"uri": "pvc://data/eval.jsonl"},
        "method": "merge",
        "merge": MERGE.model_dump(by_alias=True, exclude_none=True),
        "output": {"uri": "pvc://models/merged"},
    }
    meta = {"name": "merged", "namespace": "team", "uid": "uid-9"}
    return {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "FineTuneJob", "metadata": meta, "spec": spec}


def test_the_trainer_reads_the_resolved_sources_from_the_spec_configmap() -> None:
    """The builder freezes status.mergeSources next to the spec; the trainer's parser turns it into sources."""
    from kubetune_trainer import merging
    from kubetune_trainer.config import parse_job

    resolved = resolve(MERGE, {"a": source(), "b": source(run=5, digest="sha256:bb")}).sources
    cm = build_spec_configmap(ftj(), 1, merge_sources=resolved)
    frozen = yaml.safe_load(cm["data"][api.SPEC_FILE])
    assert frozen["status"] == {"mergeSources": resolved}
    got = merging.sources(parse_job(frozen))
    assert [(s.uri, s.weight, s.name, s.run, s.digest) for s in got] == [
        ("pvc://models/a/run-2/artifact", 0.7, "a", 2, "sha256:aa"),
        ("pvc://adapters/style/artifact", 0.3, None, None, None),
        ("pvc://models/a/run-5/artifact", 1.0, "b", 5, "sha256:bb"),
    ]
    assert "status" not in yaml.safe_load(build_spec_configmap(ftj(), 1)["data"][api.SPEC_FILE])


def test_the_trainer_pod_mounts_every_source_claim_read_only() -> None:
    obj = ftj()
    resolved = [{"name": "a", "run": 1, "uri": "pvc://runs-a/run-1/artifact", "weight": 1.0}]
    job = build_trainer_job(FineTuneJobSpec.from_dict(obj["spec"]), obj, 1, Settings(), resolved)
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models", "data", "adapters", "runs-a"}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    read_only = {n: m.get("readOnly", False) for n, m in mounts.items() if n not in ("spec", "tmp", "dshm")}
    assert sum(not ro for ro in read_only.values()) == 1  # only the output's claim (models) is writable


def test_a_source_inside_the_output_is_refused_before_any_pod() -> None:
    from kubetune_operator.specs import validate

    obj = ftj()
    obj["spec"]["merge"]["sources"][1]["uri"] = "pvc://models/merged/run-1/artifact"  # its own earlier run
    (problem,) = validate(FineTuneJobSpec.from_dict(obj["spec"]))
    assert "overlaps spec.merge.sources[1].uri 'pvc://models/merged/run-1/artifact'" in problem
    assert validate(FineTuneJobSpec.from_dict(ftj()["spec"])) == []
