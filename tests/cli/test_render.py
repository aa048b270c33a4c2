"""The plugin's views, rendered from status dicts shaped as the operator and trainer write them."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from kubetune_cli import actions
from kubetune_cli.client import CliError
from kubetune_cli.render_ftj import GATES, ftj_line, ftj_view, gate_rows, run_history, runs_table
from kubetune_cli.render_mdep import mdep_line, mdep_view


def text(renderable: Any, width: int = 120) -> str:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def ftj(phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "support", "namespace": "ml"},
        "spec": {"evaluation": {"gates": {"maxPerplexity": 10, "minExactMatch": 0.5}}},
        "status": {"phase": phase, "run": 2, "jobName": "support-run-2", **status},
    }


RUNNING = {"step": 12, "totalSteps": 40, "loss": 2.3456, "evalLoss": 2.5, "tokensPerSecond": 1234.4, "etaSeconds": 75}


def test_a_running_job_shows_a_progress_bar_with_step_speed_and_eta():
    out = text(ftj_view(ftj(progress=RUNNING)))
    assert "Phase        Running  run 2" in out and "support-run-2" in out
    assert "12/40 (30%)" in out and "loss 2.346" in out and "evalLoss 2.5" in out
    assert "1,234 tokens/s" in out and "ETA 0:01:15" in out
    assert "━" in out  # the bar itself
    assert "EvalPassed" not in out  # nothing was evaluated yet


def test_a_multi_node_run_shows_its_group():
    group = {"nodes": 4, "engine": "indexedJob", "readyPods": 3, "restarts": 1, "preemptions": 2,
             "lastRestartReason": "Preempted", "restartingJob": "u1"}  # fmt: skip
    out = text(ftj_view(ftj(group=group)))
    assert (
        "4 nodes (indexedJob), 3 ready, 1 restart(s), 2 preemption(s); last restart: Preempted (restarting now)" in out
    )
    assert "Group" not in text(ftj_view(ftj()))


def test_a_finished_job_shows_base_vs_tuned_gates_and_why_and_the_artifact():
    obj = ftj(
        "Succeeded",
        progress={**RUNNING, "step": 40, "etaSeconds": 0},
        metrics={"evalLoss": 1.25, "perplexity": 3.49, "exactMatch": 0.25},
        baseMetrics={"evalLoss": 2.5, "perplexity": 12.18, "exactMatch": 0.0},
        evalPassed=False,
        artifact={"uri": "s3://b/out/run-2", "digest": "sha256:abc123", "kind": "adapter"},
        conditions=[
            {"type": "EvalPassed", "status": "False", "reason": "GatesFailed", "message": "evaluation gates failed"}
        ],
    )
    out = text(ftj_view(obj))
    rows = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("│ ") and "│" in line[2:]}
    assert rows["perplexity"][:5] == ["│", "12.18", "│", "3.49", "│"] and "-8.69" in rows["perplexity"]
    assert rows["maxPerplexity"][:5] == ["│", "≤", "10", "│", "3.49"] and "Pass" in rows["maxPerplexity"]
    assert "Fail" in rows["minExactMatch"] and "0.25" in rows["minExactMatch"]
    assert "EvalPassed: FAILED (GatesFailed: evaluation gates failed)" in out
    assert "s3://b/out/run-2 (adapter)" in out and "sha256:abc123" in out
    assert ftj_line(obj).endswith("evalPassed False artifact s3://b/out/run-2")


def test_the_plugins_gate_table_agrees_with_the_trainers():
    from kubetune_trainer.config import GatesConfig
    from kubetune_trainer.scoring import apply_gates

    fields = {"maxPerplexity": "max_perplexity", "maxEvalLoss": "max_eval_loss",
              "minExactMatch": "min_exact_match", "minPreferenceAccuracy": "min_preference_accuracy"}  # fmt: skip
    assert {g for g, _, _ in GATES} == set(fields)
    metrics = {"perplexity": 5.0, "evalLoss": 1.6, "exactMatch": 0.4, "preferenceAccuracy": 0.7}
    metric_of = {g: m for g, m, _ in GATES}
    for gate, trainer_field in fields.items():
        for threshold in (metrics[metric_of[gate]] * f for f in (0.9, 1.0, 1.1)):  # below, at, above the value
            _, failures = apply_gates(metrics, GatesConfig(**{trainer_field: threshold}))
            (row,) = gate_rows({gate: threshold}, metrics)
            assert (row[3] == "Pass") == (not failures), (gate, threshold, row, failures)


def pod(run: int, message: str, finished: str) -> dict[str, Any]:
    term = {"message": message, "finishedAt": finished}
    return {"metadata": {"labels": {"kubetune.io/run": str(run)}},
            "status": {"containerStatuses": [{"state": {"terminated": term}}]}}  # fmt: skip


def job(run: int, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"support-run-{run}", "labels": {"kubetune.io/run": str(run)}}, "status": status}


def test_run_history_takes_each_runs_result_from_its_pods_and_the_current_run_from_status():
    result1 = '{"phase":"Succeeded","metrics":{"evalLoss":1.5},"baseMetrics":{"evalLoss":2.5},"steps":20,' \
              '"evalPassed":true,"artifact":{"uri":"/o/run-1","digest":"sha256:111"}}'  # fmt: skip
    pods = [pod(1, "oom", "2026-01-01T00:00:00Z"), pod(1, result1, "2026-01-01T00:05:00Z")]
    jobs = [job(1, succeeded=1, completionTime="2026-01-01T00:05:00Z"), job(2, active=1)]
    obj = ftj(progress=RUNNING)
    history = run_history(obj, jobs, pods)
    assert [(r["run"], r["phase"], r["steps"]) for r in history] == [(1, "Succeeded", 20), (2, "Running", 12)]
    assert history[0]["metrics"] == {"evalLoss": 1.5} and history[0]["artifact"]["digest"] == "sha256:111"
    out = text(runs_table("support", history), width=140)
    assert "2.5 → 1.5" in out and "sha256:111" in out and "Running" in out


def md(**status: Any) -> dict[str, Any]:
    spec = {"canary": {"steps": [25, 50, 100], "manualGate": True}}
    return {"metadata": {"name": "chat", "namespace": "ml"}, "spec": spec, "status": status}


ANALYSIS = [
    {"step": 0, "check": "errorRate", "value": 0.0, "threshold": "< 0.05", "verdict": "Pass", "message": "0 < 0.05"},
    {
        "step": 1,
        "check": "p99LatencyRatio",
        "value": 1.31,
        "low": 1.28,
        "high": 1.41,
        "threshold": "< 1.2",
        "verdict": "Fail",
        "message": "canary P99 1.28x-1.41x of stable",
    },
    {"step": 1, "check": "errorRate", "value": 0.01, "threshold": "< 0.05", "verdict": "Pass", "message": "ok"},
]


def test_a_canary_shows_versions_nominal_and_achieved_share_and_each_checks_latest_verdict():
    obj = md(phase="Progressing", stableVersion="v1abc", canaryVersion="v2def", canaryWeight=50,
             achievedCanaryWeight=47.6, currentStep=1, message="analysis failed (1/2 tolerated)",
             analysis=ANALYSIS)  # fmt: skip
    out = text(mdep_view(obj), width=160)
    assert "Progressing" in out and "analysis failed (1/2 tolerated)" in out
    assert "v1abc" in out and "52.4%" in out  # stable's achieved share
    assert "50% nominal, 47.6% achieved step 2/3" in out
    lines = [line for line in out.splitlines() if "errorRate" in line or "p99LatencyRatio" in line]
    assert len(lines) == 2  # the latest record of each check only
    assert "50%" in lines[0] and "0.01" in lines[0] and "Pass" in lines[0]
    assert "1.31 [1.28, 1.41]" in lines[1] and "< 1.2" in lines[1] and "Fail" in lines[1]
    assert mdep_line(obj) == (
        "chat Progressing stable v1abc canary v2def 50% nominal 47.6% achieved "
        "errorRate=0.01:Pass p99LatencyRatio=1.31:Fail"
    )


def test_verbs_write_the_annotation_the_operator_reads_and_refuse_what_it_has_no_mechanism_for():
    gate = md(canaryVersion="v2", currentStep=0, canaryWeight=25)
    assert actions.promote(gate, full=False)[0][1]["value"] == {"kubetune.io/approve-step": "v2/50"}
    assert actions.promote(gate, full=True)[0][1]["value"] == {"kubetune.io/promote": "v2"}
    done = md(canaryVersion="v2", currentStep=2, awaitingPromotion=True)
    assert actions.promote(done, full=False)[0][1]["value"] == {"kubetune.io/promote": "v2"}
    ungated = {**gate, "spec": {"canary": {"steps": [25, 100]}}}
    with pytest.raises(CliError, match=r"no manual gate to open\); `promote --full`"):
        actions.promote(ungated, full=False)
    with pytest.raises(CliError, match="has no canary in flight"):
        actions.approve(md(stableVersion="v1"))
    with pytest.raises(CliError, match="no rolled-back version"):
        actions.retry(md(stableVersion="v1"))
    annotated = {**gate, "metadata": {**gate["metadata"], "annotations": {"other": "x"}}}
    assert actions.approve(annotated, 100)[0][1] == {
        "op": "add", "path": "/metadata/annotations/kubetune.io~1approve-step", "value": "v2/100"}  # fmt: skip
