"""The canary step machine and analysis verdicts (pure)."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from kubetune_operator import analysis, canary
from kubetune_operator.analysis import Check, Selectors, judge
from kubetune_operator.serving_spec import Analysis, Canary

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RATIO = Check("latencyP99Ratio", {"canary": "c", "stable": "s"}, None, 1.2, "pause")
ERRORS = Check("errorRate", {"value": "e"}, None, 0.01, "pause")
REQUESTS = Check("requests", {"value": "r"}, 50, None, "pause")


@pytest.mark.parametrize(
    ("check", "answers", "verdict"),
    [
        (RATIO, {"canary": 0.11, "stable": 0.1}, "Pass"),
        (RATIO, {"canary": 0.5, "stable": 0.1}, "Fail"),
        (RATIO, {"canary": None, "stable": 0.1}, "NoData"),
        (RATIO, {"canary": math.nan, "stable": 0.1}, "NoData"),
        (RATIO, {"canary": 0.1, "stable": 0.0}, "NoData"),
        (ERRORS, {"value": 0.0}, "Pass"),
        (ERRORS, {"value": 0.5}, "Fail"),
        (ERRORS, {"value": None}, "NoData"),  # no requests is not "no errors"
        (REQUESTS, {"value": 10}, "NoData"),
        (REQUESTS, {"value": 80}, "Pass"),
    ],
)
def test_judge(check, answers, verdict):
    assert judge(check, answers).verdict == verdict


def test_failed_verdict_names_value_and_threshold():
    v = judge(RATIO, {"canary": 0.3, "stable": 0.1})
    assert v.value == pytest.approx(3.0) and v.threshold == "<= 1.2" and "latencyP99Ratio 3 > max 1.2" in v.message


def test_checks_for_builtin_on_cpu_have_no_gpu_check():
    sel = Selectors('version="c"', 'version="s"')
    checks = analysis.build_checks(Analysis(enabled=True, prometheus="http://p"), "builtin", sel, "30s", 0, 0.9)
    assert [c.name for c in checks] == ["requests", "latencyP99Ratio", "errorRate"]
    assert 'kubetune_request_duration_seconds_bucket{version="c"}[30s]' in checks[1].queries["canary"]


def test_checks_for_vllm_use_pod_selectors_and_budget():
    sel = analysis.selectors_for("vllm", "ml", "chat", "c", "s")
    a = Analysis(enabled=True, prometheus="http://p", queries=({"name": "ttft", "query": "x{ {{canary}} }", "max": 2},))
    checks = analysis.build_checks(a, "vllm", sel, "1m", 1, 0.9)
    by_name = {c.name: c for c in checks}
    assert 'pod=~"chat-canary-.+"' in by_name["latencyP99Ratio"].queries["canary"]
    assert by_name["gpuMemoryUtilization"].max == pytest.approx(0.92)
    assert 'pod=~"chat-canary-.+"' in by_name["ttft"].queries["value"]


def verdict(name: str, kind: str) -> analysis.Verdict:
    return analysis.Verdict(name, kind, None, "", "q", f"{name} {kind}")


CANARY = Canary(steps=(5, 50, 100), interval_seconds=30, failure_limit=1, analysis=Analysis(no_data_limit=2))


def test_version_changes():
    assert canary.on_version(canary.Rollout(stable_version="a", canary_version="b"), "c") == "restart-canary"
    assert canary.on_version(canary.Rollout(stable_version="a", canary_version="b"), "a") == "cancel-canary"
    assert canary.on_version(canary.Rollout(stable_version="a", rolled_back_version="b"), "b") == "none"


def test_advance_through_steps_then_promote():
    r = canary.Rollout(stable_version="a", canary_version="b", step=0, step_start=T0)
    d = canary.decide(r, CANARY, [verdict("x", "Pass")], T0)
    assert d.kind == "advance" and d.rollout.step == 1
    d = canary.decide(d.rollout, CANARY, [], T0)
    assert d.kind == "advance" and d.rollout.step == 2
    assert canary.decide(d.rollout, CANARY, [], T0).kind == "promote"


def test_failure_limit_then_rollback():
    r = canary.Rollout(stable_version="a", canary_version="b", step=1, step_start=T0)
    d = canary.decide(r, CANARY, [verdict("latency", "Fail")], T0)
    assert d.kind == "hold" and d.rollout.failures == 1
    d = canary.decide(d.rollout, CANARY, [verdict("latency", "Fail")], T0)
    assert d.kind == "rollback" and "latency" in d.reason and "50%" in d.reason


def test_no_data_holds_never_promotes_and_ends_in_rollback():
    r = canary.Rollout(stable_version="a", canary_version="b", step=2, step_start=T0)
    for expected in (1, 2):
        d = canary.decide(r, CANARY, [verdict("requests", "NoData")], T0)
        assert d.kind == "hold" and d.rollout.no_data == expected
        r = d.rollout
    assert canary.decide(r, CANARY, [verdict("requests", "NoData")], T0).kind == "rollback"


def test_policies_settle_missing_data():
    nd = verdict("q", "Error")
    assert canary.apply_policy(nd, "pause").verdict == "Error"
    assert canary.apply_policy(nd, "pass").verdict == "Pass"
    assert canary.apply_policy(nd, "fail").verdict == "Fail"
    assert canary.apply_policy(verdict("q", "Fail"), "pass").verdict == "Fail"


def test_manual_promotion_when_auto_promote_off():
    c = Canary(steps=(100,), auto_promote=False)
    d = canary.decide(canary.Rollout(stable_version="a", canary_version="b"), c, [], T0)
    assert d.kind == "await-promotion"


def test_step_due():
    r = canary.Rollout(step_start=T0)
    assert not canary.step_due(r, CANARY, T0 + dt.timedelta(seconds=29))
    assert canary.step_due(r, CANARY, T0 + dt.timedelta(seconds=30))
