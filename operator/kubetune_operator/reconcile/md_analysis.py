"""A canary step's analysis: ask Prometheus the checks' queries, judge the answers, keep the history."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune_operator import analysis, canary, metrics
from kubetune_operator.prometheus import PrometheusQueryError, PrometheusUnavailable, query
from kubetune_operator.serving_spec import ModelDeploymentSpec
from kubetune_operator.settings import Settings

HISTORY = 50


def analyse(
    spec: ModelDeploymentSpec, ns: str, name: str, r: canary.Rollout, settings: Settings
) -> list[analysis.Verdict]:
    a = spec.canary.analysis
    if not a.enabled or not a.prometheus:
        return []
    window = f"{max(int(spec.canary.interval_seconds), 10)}s"
    sel = analysis.selectors_for(spec.runtime, ns, name, r.canary_version or "", r.stable_version or "")
    budget = float(spec.vllm.get("gpuMemoryUtilization", 0.9))
    checks = analysis.build_checks(a, spec.runtime, sel, window, spec.resources.gpus, budget)
    verdicts = []
    for check in checks:
        verdict = judge_check(check, a.prometheus, settings.prometheus_timeout_seconds)
        if verdict.value is not None:
            metrics.ANALYSIS_VALUE.labels(ns, name, check.name).set(verdict.value)
        verdicts.append(canary.apply_policy(verdict, check.policy))
    return analysis.gate(verdicts)


def judge_check(check: analysis.Check, address: str, timeout: float) -> analysis.Verdict:
    """Ask Prometheus a check's queries and judge the answers; an unreachable Prometheus and a
    refused query are both Errors, each with its own message (the latter Prometheus' own)."""
    try:
        answers = {role: query(address, q, timeout) for role, q in {**check.queries, **check.presence}.items()}
    except PrometheusUnavailable as err:
        return analysis.error_verdict(check, f"Prometheus unavailable: {err}")
    except PrometheusQueryError as err:
        return analysis.error_verdict(check, f"Prometheus rejected the query: {err}")
    return analysis.judge(check, answers)


def history(
    previous: list[dict[str, Any]], step: int, verdicts: list[analysis.Verdict], now: dt.datetime
) -> list[dict[str, Any]]:
    """The status' analysis log with this step's verdicts appended, the last HISTORY entries."""
    entries = list(previous)
    for v in verdicts:
        entries.append(
            {
                "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "step": step,
                "check": v.check,
                "query": v.query[:1000],
                "value": v.value,
                "low": v.low,
                "high": v.high,
                "threshold": v.threshold,
                "verdict": v.verdict,
                "message": v.message,
            }
        )
    return entries[-HISTORY:]
