"""The canary step machine and analysis verdicts (pure)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

from kubetune_operator import analysis, canary
from kubetune_operator.analysis import Check, Selectors, judge
from kubetune_operator.serving_spec import Analysis, Canary, ModelDeploymentSpec

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RATIO = Check("latencyP99Ratio", {"canary": "c", "stable": "s"}, None, 1.2, "pause", kind=analysis.QUANTILE_RATIO)
ERRORS = Check("errorRate", {"value": "e"}, None, 0.01, "pause")
REQUESTS = Check("requests", {"value": "r"}, 50, None, "pause", gate=True)
PRESENCE = {"exported": "x", "scraped": "y"}
GPU = Check("gpu", {"value": "g"}, None, 0.95, "pause", presence=PRESENCE, skip_reason="no GPU")


def one(value: float) -> list[tuple[dict[str, str], float]]:
    return [({}, value)]


def buckets(bounds: tuple[float, ...], latency: float, n: float = 100) -> list[tuple[dict[str, str], float]]:
    """Cumulative bucket samples of n requests that all took `latency` seconds."""
    return [({"le": repr(le)}, n if latency <= le else 0.0) for le in bounds] + [({"le": "+Inf"}, n)]


FINE = tuple(0.005 * 1.05**k for k in range(195))  # the builtin server's layout
VLLM = analysis.VLLM_E2E_LATENCY_BUCKETS


@pytest.mark.parametrize(
    ("check", "answers", "verdict"),
    [
        (RATIO, {"canary": buckets(FINE, 0.11), "stable": buckets(FINE, 0.1)}, "Pass"),
        (RATIO, {"canary": buckets(FINE, 0.5), "stable": buckets(FINE, 0.1)}, "Fail"),
        (RATIO, {"canary": [], "stable": buckets(FINE, 0.1)}, "NoData"),
        (RATIO, {"canary": buckets(FINE, 0.1, n=0), "stable": buckets(FINE, 0.1)}, "NoData"),  # idle: 0/0
        (RATIO, {"canary": [({"le": "+Inf"}, math.nan)], "stable": buckets(FINE, 0.1)}, "NoData"),
        (ERRORS, {"value": one(0.0)}, "Pass"),
        (ERRORS, {"value": one(0.5)}, "Fail"),
        (ERRORS, {"value": []}, "NoData"),  # no requests is not "no errors"
        (ERRORS, {"value": one(math.nan)}, "NoData"),
        (REQUESTS, {"value": one(10)}, "NoData"),
        (REQUESTS, {"value": one(80)}, "Pass"),
    ],
)
def test_judge(check, answers, verdict):
    assert judge(check, answers).verdict == verdict


def test_failed_verdict_names_value_bounds_and_threshold():
    v = judge(RATIO, {"canary": buckets(FINE, 0.3), "stable": buckets(FINE, 0.1)})
    assert v.verdict == "Fail" and v.threshold == "<= 1.2"
    assert v.value == pytest.approx(3.0, rel=0.06) and v.low is not None and v.high is not None
    assert v.low <= v.value <= v.high and v.high / v.low <= 1.06**2
    assert "outside <= 1.2" in v.message


def test_histogram_quantile_matches_prometheus_and_brackets_the_truth():
    q = analysis.histogram_quantile(0.99, buckets(VLLM, 0.9))
    assert q == analysis.Quantile(pytest.approx(0.998), 0.8, 1.0)  # interpolated near the upper bound
    above = analysis.histogram_quantile(0.99, buckets(VLLM, 9000))
    assert above is not None and above.value == 7680.0 and math.isinf(above.high)
    assert analysis.histogram_quantile(0.99, buckets(VLLM, 1.0)[:-1]) is None  # no +Inf bucket


@pytest.mark.parametrize(
    ("canary_s", "stable_s", "verdict"),
    [
        (1.1, 0.95, "NoData"),  # +16 %: canary in (1, 1.5], stable in (0.8, 1] -> [1.0, 1.875] straddles 1.2
        (1.05, 0.95, "NoData"),  # +10 %, the same buckets: still undecidable, never a Pass
        (1.37, 1.05, "NoData"),  # +30 %, both in (1, 1.5]: ratio in [0.67, 1.5]; histogram_quantile says 1.0
        (0.99, 0.9, "NoData"),  # +10 % across the 1 s bound: histogram_quantile says 1.5, a false Fail
        (2.2, 0.9, "Fail"),  # canary in (2, 2.5], stable in (0.8, 1]: at least 2.0
        (0.45, 0.45, "NoData"),  # same bucket (0.3, 0.5]: ratio in [0.6, 1.67]
        (0.35, 1.8, "Pass"),  # at most 0.5 / 1.5
    ],
)
def test_vllm_buckets_make_a_straddling_ratio_inconclusive(canary_s, stable_s, verdict):
    v = judge(RATIO, {"canary": buckets(VLLM, canary_s), "stable": buckets(VLLM, stable_s)})
    assert v.verdict == verdict, v.message
    assert v.low is not None and v.low <= canary_s / stable_s
    assert v.high is None or canary_s / stable_s <= v.high
    if verdict == "NoData":
        assert v.value is not None and "inconclusive" in v.message and "straddles <= 1.2" in v.message


def test_inconclusive_ratio_follows_the_no_data_policy_and_never_promotes():
    v = judge(RATIO, {"canary": buckets(VLLM, 1.37), "stable": buckets(VLLM, 1.05)})
    assert canary.apply_policy(v, "fail").verdict == "Fail"
    r = canary.Rollout(stable_version="a", canary_version="b", step=2, step_start=T0)
    assert canary.decide(r, CANARY, [v], T0).kind == "hold"


@pytest.mark.parametrize(("canary_s", "verdict"), [(0.33, "Pass"), (0.39, "Fail"), (0.45, "Fail")])
def test_fine_buckets_decide_ten_and_thirty_percent(canary_s, verdict):
    assert judge(RATIO, {"canary": buckets(FINE, canary_s), "stable": buckets(FINE, 0.3)}).verdict == verdict


def test_several_series_are_all_judged_and_the_worst_decides():
    series = [({"pod": "a"}, 0.0), ({"pod": "b"}, 0.2), ({"pod": "c"}, math.nan)]
    v = judge(ERRORS, {"value": series})
    assert v.verdict == "Fail" and v.value == 0.2 and 'pod="b"' in v.message and "1 no data" in v.message
    assert judge(ERRORS, {"value": [({"pod": "a"}, 0.0), ({"pod": "b"}, 0.001)]}).value == 0.001
    low = Check("acc", {"value": "q"}, 0.8, None, "pause")
    assert judge(low, {"value": [({"pod": "a"}, 0.9), ({"pod": "b"}, 0.7)]}).verdict == "Fail"
    assert judge(ERRORS, {"value": [({"pod": "a"}, math.nan), ({"pod": "b"}, math.inf)]}).verdict == "NoData"


def test_metric_absent_by_design_is_skipped_but_not_scraped_yet_is_no_data():
    skipped = judge(GPU, {"value": [], "exported": [], "scraped": one(3)})
    assert skipped.verdict == "Skipped" and "no GPU" in skipped.message
    assert judge(GPU, {"value": [], "exported": [], "scraped": []}).verdict == "NoData"
    assert judge(GPU, {"value": [], "exported": one(1), "scraped": one(3)}).verdict == "NoData"
    assert judge(GPU, {"value": one(0.5), "exported": one(1), "scraped": one(3)}).verdict == "Pass"


def test_too_few_requests_means_no_verdict_of_any_check_is_acted_on():
    few = judge(REQUESTS, {"value": one(10)})
    slow = judge(RATIO, {"canary": buckets(FINE, 0.5), "stable": buckets(FINE, 0.1)})
    fast = judge(ERRORS, {"value": one(0.0)})
    skipped = judge(GPU, {"value": [], "exported": [], "scraped": one(3)})
    gated = analysis.gate([few, slow, fast, skipped])
    assert [v.verdict for v in gated] == ["NoData", "NoData", "NoData", "Skipped"]
    assert "not acted on" in gated[1].message and "would be Fail" in gated[1].message
    r = canary.Rollout(stable_version="a", canary_version="b", step=0, step_start=T0)
    for verdicts in ([few, slow, fast], [few, fast]):  # the caller gating or not: decide gates too
        d = canary.decide(r, CANARY, verdicts, T0)
        assert d.kind == "hold" and d.rollout.failures == 0 and d.rollout.no_data == 1
    assert analysis.gate([judge(REQUESTS, {"value": one(80)}), slow])[1].verdict == "Fail"


def deployment(generation: int, seen: int, ready: int, updated: int) -> dict[str, Any]:
    status = {"observedGeneration": seen, "readyReplicas": ready, "updatedReplicas": updated}
    return {"metadata": {"generation": generation}, "spec": {"replicas": 2}, "status": status}


def test_progress_deadline():
    c = Canary(progress_deadline_seconds=60)
    ready = canary.readiness(deployment(3, 3, 2, 2))
    assert ready.ok and canary.progress_deadline(ready, T0, c, T0 + dt.timedelta(hours=1)) == (None, None)
    assert not canary.readiness(deployment(3, 3, 2, 0)).ok  # Ready pods of the old template
    unseen = canary.readiness(deployment(4, 3, 2, 2))  # the controller has not seen the new spec yet
    assert not unseen.ok
    assert canary.progress_deadline(unseen, T0, c, T0 + dt.timedelta(seconds=60)) == (T0, None)
    since, reason = canary.progress_deadline(unseen, T0, c, T0 + dt.timedelta(seconds=61))
    assert since == T0 and reason is not None and "not Ready" in reason and "0/2" in reason


def test_checks_for_builtin_on_cpu_have_no_gpu_check():
    sel = Selectors('version="c"', 'version="s"')
    checks = analysis.build_checks(Analysis(enabled=True, prometheus="http://p"), "builtin", sel, "30s", 0, 0.9)
    assert [c.name for c in checks] == ["requests", "latencyP99Ratio", "errorRate"]
    bucket_rates = 'sum by (le) (rate(kubetune_request_duration_seconds_bucket{version="c"}[30s]))'
    assert checks[1].queries["canary"] == bucket_rates
    with_gpu = analysis.build_checks(Analysis(enabled=True, prometheus="http://p"), "builtin", sel, "30s", 1, 0.9)
    assert with_gpu[-1].name == "gpuMemoryUtilization" and with_gpu[-1].presence["exported"].startswith("count(")


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


RATINGS = Check(
    "userRatingDrop",
    {"canary": "cm", "canaryCount": "cn", "stable": "sm", "stableCount": "sn"},
    None,
    1.0,
    "pause",
    kind=analysis.RATING_DROP,
    min_count=10,
)


def rated(canary_mean: float, canary_n: float, stable_mean: float, stable_n: float) -> dict[str, Any]:
    return {
        "canary": one(canary_mean),
        "canaryCount": one(canary_n),
        "stable": one(stable_mean),
        "stableCount": one(stable_n),
    }


@pytest.mark.parametrize(
    ("answers", "verdict", "value"),
    [
        (rated(2.0, 20, 4.5, 20), "Fail", 2.5),
        (rated(4.5, 20, 4.5, 20), "Pass", 0.0),
        (rated(3.5, 12, 4.5, 40), "Pass", 1.0),  # exactly maxUserRatingDrop below: allowed
        (rated(4.8, 12, 4.0, 40), "Pass", pytest.approx(-0.8)),  # a better-rated canary
        (rated(1.0, 9.6, 4.5, 20), "NoData", None),  # minFeedback 10: a rating fewer is not enough
        (rated(1.0, 20, 4.5, 3), "NoData", None),  # too few on the stable side counts the same
        ({"canary": one(1.0), "canaryCount": one(20), "stable": [], "stableCount": []}, "NoData", None),
        (rated(math.nan, 20, 4.5, 20), "NoData", None),
    ],
)
def test_rating_drop_is_judged_canary_against_stable(answers, verdict, value):
    v = judge(RATINGS, answers)
    assert (v.verdict, v.value) == (verdict, value), v.message
    assert v.threshold == "<= 1"


def test_rating_verdicts_name_the_ratings_and_too_few_follows_the_no_data_policy():
    failed = judge(RATINGS, rated(2.0, 20, 4.5, 24))
    assert failed.message == "user rating drop 2.5 > max 1 (canary mean rating 2 of 20 ratings, stable 4.5 of 24)"
    few = judge(RATINGS, rated(1.0, 4, 4.5, 30))
    assert few.message == "too few user ratings in the window (canary 4; minFeedback 10)"
    assert canary.apply_policy(few, "fail").verdict == "Fail" and canary.apply_policy(few, "pause").verdict == "NoData"
    r = canary.Rollout(stable_version="a", canary_version="b", step=2, step_start=T0)
    d = canary.decide(r, Canary(steps=(5, 50, 100)), [failed], T0)
    assert d.kind == "rollback" and "userRatingDrop: user rating drop 2.5" in d.reason
    assert canary.decide(r, CANARY, [few], T0).kind == "hold"


@pytest.mark.parametrize("runtime", ["builtin", "vllm"])
def test_rating_check_only_when_asked_and_picks_feedback_by_version(runtime):
    sel = analysis.selectors_for(runtime, "ml", "chat", "c", "s")
    off = analysis.build_checks(Analysis(enabled=True, prometheus="http://p"), runtime, sel, "1m", 0, 0.9)
    assert "userRatingDrop" not in [c.name for c in off]
    on = Analysis(enabled=True, prometheus="http://p", max_user_rating_drop=0.5, min_feedback=25, no_data_policy="fail")
    check = analysis.build_checks(on, runtime, sel, "1m", 0, 0.9)[-1]
    assert (check.name, check.kind, check.max, check.min_count, check.policy) == (
        "userRatingDrop",
        analysis.RATING_DROP,
        0.5,
        25,
        "fail",
    )
    # Feedback for a canary response may reach a stable pod: the rated version decides, on vLLM too.
    assert check.queries["canaryCount"] == 'sum(increase(kubetune_feedback_rating_count{version="c"}[1m]))'
    assert check.queries["stable"] == (
        'sum(increase(kubetune_feedback_rating_sum{version="s"}[1m]))'
        ' / sum(increase(kubetune_feedback_rating_count{version="s"}[1m]))'
    )


def test_rating_fields_come_from_the_spec():
    spec = {"baseModel": {"name": "m"}, "canary": {"analysis": {"prometheus": {"address": "http://p"}}}}
    assert ModelDeploymentSpec.from_dict(spec).canary.analysis.max_user_rating_drop is None
    assert ModelDeploymentSpec.from_dict(spec).canary.analysis.min_feedback == 10
    spec["canary"]["analysis"] |= {"maxUserRatingDrop": 0.75, "minFeedback": 3}
    a = ModelDeploymentSpec.from_dict(spec).canary.analysis
    assert (a.max_user_rating_drop, a.min_feedback) == (0.75, 3)
