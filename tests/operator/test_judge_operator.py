"""spec.evaluation.judge on the operator's side: the key Secret by reference, modelDeploymentRef resolved to the
stable Service, status.judge copied from the trainer's result and EvalPassed JudgeUnavailable (all pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from kubetune_operator import judge_target
from kubetune_operator.builders.serving import build_services
from kubetune_operator.builders.trainer_job import build_trainer_job
from kubetune_operator.conditions import get_condition
from kubetune_operator.job_state import GATED, UNGATED, read_job, status_for_run
from kubetune_operator.serving_spec import ModelDeploymentSpec
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec

FTJ: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "bot", "namespace": "ml", "uid": "u1", "generation": 1},
    "spec": {
        "baseModel": {"name": "org/tiny"},
        "dataset": {"uri": "pvc://data/d.jsonl"},
        "output": {"uri": "pvc://models/bot"},
        "evaluation": {
            "judge": {"url": "https://judge.example", "apiKeySecretRef": {"name": "judge-key"}},
            "gates": {"minJudgeWinRate": 0.6},
        },
    },
}
DONE = read_job({"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}})


def env_of(spec: FineTuneJobSpec) -> dict[str, Any]:
    job = build_trainer_job(spec, FTJ, 1, Settings())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_judge_key_is_a_secret_reference_never_a_value():
    env = env_of(FineTuneJobSpec.from_dict(FTJ["spec"]))
    assert env["KUBETUNE_JUDGE_API_KEY"] == {"secretKeyRef": {"name": "judge-key", "key": "token"}}
    assert "KUBETUNE_JUDGE_URL" not in env  # a url in the spec: the trainer reads it from there
    no_key = {**FTJ["spec"], "evaluation": {"judge": {"url": "http://j"}}}
    assert "KUBETUNE_JUDGE_API_KEY" not in env_of(FineTuneJobSpec.from_dict(no_key))


def test_a_model_deployment_judge_is_its_stable_service():
    md = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "judge", "namespace": "ml", "uid": "m1"},
        "spec": {"baseModel": {"name": "org/judge"}, "port": 9000},
    }
    url = judge_target.resolve("judge", md, "ml")
    assert url == "http://judge-stable.ml.svc:9000"
    # The Service the builder really makes for that ModelDeployment has that name and port.
    services = {s["metadata"]["name"]: s for s in build_services(ModelDeploymentSpec.from_dict(md["spec"]), md)}
    assert services["judge-stable"]["spec"]["ports"][0]["port"] == 9000
    spec = {**FTJ["spec"], "evaluation": {"judge": {"modelDeploymentRef": {"name": "judge"}}}}
    parsed = FineTuneJobSpec.from_dict(spec)
    assert parsed.judge_ref == "judge"
    assert env_of(dataclasses.replace(parsed, judge_url=url))["KUBETUNE_JUDGE_URL"] == url


def test_a_missing_judge_model_deployment_holds_the_run_with_a_condition():
    why = judge_target.resolve("gone", None, "ml")
    assert isinstance(why, judge_target.Unavailable) and why.reason == "ModelDeploymentNotFound"
    patch = judge_target.unavailable_patch({}, why, 2, "now", keep_phase=False)
    cond = get_condition(patch["conditions"], "JudgeReady")
    assert cond["status"] == "False" and "spec.evaluation.judge.modelDeploymentRef" in cond["message"]
    assert patch["phase"] == "Pending" and judge_target.waits(patch)


def test_status_judge_is_copied_and_the_win_rate_gate_decides():
    verdicts = {"judged": 10, "wins": 7, "ties": 2, "losses": 1, "winRate": 0.8, "positionConsistency": 0.9}
    result = {"evalPassed": True, "metrics": {"judgeWinRate": 0.8}, "judge": verdicts}
    patch = status_for_run({}, DONE, 1, "now", result, GATED)
    assert patch["judge"] == verdicts and patch["metrics"]["judgeWinRate"] == 0.8
    assert get_condition(patch["conditions"], "EvalPassed")["reason"] == "GatesPassed"


def test_an_unreachable_judge_is_eval_passed_false_judge_unavailable_even_ungated():
    error = "judge http://judge.ml.svc:8000/v1/chat/completions unreachable after 4 attempts: refused"
    for mode in (GATED, UNGATED):
        result = {"evalPassed": False, "judge": {"judged": 0, "error": error}}
        patch = status_for_run({}, DONE, 1, "now", result, mode)
        cond = get_condition(patch["conditions"], "EvalPassed")
        assert patch["evalPassed"] is False and cond["reason"] == "JudgeUnavailable"
        assert "http://judge.ml.svc:8000" in cond["message"] and patch["judge"]["error"] == error
    assert "judge-key" not in yaml.safe_dump(patch)


def test_a_check_regex_that_does_not_compile_is_a_problem_before_any_pod():
    spec = {**FTJ["spec"], "evaluation": {"checks": [{"name": "ticket", "type": "regex", "pattern": "T-(["}]}}
    (problem,) = FineTuneJobSpec.from_dict(spec).problems
    assert "evaluation.checks: ticket: pattern 'T-([' is not a regular expression" in problem
