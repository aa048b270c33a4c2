"""spec.evaluation.judge.modelDeploymentRef with real parts: the operator against the real apiserver.

A judge naming a missing ModelDeployment sets JudgeReady False and starts no Job; once the ModelDeployment
exists, the run starts and its trainer Job is told the ModelDeployment's stable Service URL, with the API
key as a Secret reference.
"""

from __future__ import annotations

import pytest

from tests.k8s.conftest import wait_for

pytestmark = pytest.mark.slow


def test_a_judge_model_deployment_is_resolved_before_the_run_starts(k8s, operator):
    spec = {
        "baseModel": {"name": "org/tiny"},
        "dataset": {"uri": "/data/d.jsonl"},
        "output": {"uri": "/models/judged"},
        "evaluation": {
            "judge": {"modelDeploymentRef": {"name": "judge"}, "apiKeySecretRef": {"name": "judge-key", "key": "k"}},
            "gates": {"minJudgeWinRate": 0.5},
        },
    }
    k8s.create_ftj("judged", spec)

    def judge_ready(status_value: str):
        def check():
            status = k8s.get_ftj("judged").get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "JudgeReady"), {})
            return status if ready.get("status") == status_value else None

        return check

    status = wait_for(judge_ready("False"), 30, "JudgeReady False")
    assert status["phase"] == "Pending" and "ModelDeployment judge not found" in status["message"]
    assert not k8s.jobs(), "no trainer Job before the judge is known"

    k8s.create_md("judge", {"baseModel": {"name": "org/judge"}, "adapter": {"uri": "/a"}, "port": 9000})
    status = wait_for(judge_ready("True"), 60, "JudgeReady True")
    (job,) = wait_for(lambda: k8s.jobs() or None, 30, "the trainer Job")
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    url = f"http://judge-stable.{k8s.ns}.svc:9000"
    assert env["KUBETUNE_JUDGE_URL"].value == url and url in str(status["conditions"])
    ref = env["KUBETUNE_JUDGE_API_KEY"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("judge-key", "k") and env["KUBETUNE_JUDGE_API_KEY"].value is None
