"""Canary analysis checks: the PromQL to ask and how to judge the answers (pure, no I/O).

A missing answer (empty result, NaN, Inf) is NoData, never 0: an idle canary has no latency, and
reading that as "fast" would promote it. Too few canary requests is NoData too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubetune_operator.serving_spec import Analysis

PASS, FAIL, NO_DATA, ERROR, SKIPPED = "Pass", "Fail", "NoData", "Error", "Skipped"


@dataclass(frozen=True)
class Check:
    name: str
    queries: dict[str, str]  # role -> PromQL; a ratio check has "canary" and "stable"
    min: float | None
    max: float | None
    policy: str  # what NoData/Error count as: pause | fail | pass


@dataclass(frozen=True)
class Verdict:
    check: str
    verdict: str
    value: float | None
    threshold: str
    query: str
    message: str


@dataclass(frozen=True)
class Selectors:
    """PromQL label matchers picking each track's series."""

    canary: str
    stable: str


def selectors_for(runtime: str, namespace: str, md: str, canary_version: str, stable_version: str) -> Selectors:
    """The builtin server labels its metrics with `version`; vLLM does not know its track, so its
    series are told apart by pod name (the `pod` label Prometheus' Kubernetes discovery adds)."""
    if runtime == "vllm":
        return Selectors(
            f'namespace="{namespace}",pod=~"{md}-canary-.+"', f'namespace="{namespace}",pod=~"{md}-stable-.+"'
        )
    return Selectors(f'version="{canary_version}"', f'version="{stable_version}"')


def build_checks(
    analysis: Analysis, runtime: str, sel: Selectors, window: str, gpus: int, vllm_budget: float
) -> list[Check]:
    latency = (
        "vllm:e2e_request_latency_seconds_bucket" if runtime == "vllm" else "kubetune_request_duration_seconds_bucket"
    )

    def p99(s: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate({latency}{{{s}}}[{window}])))"

    policy = analysis.no_data_policy
    checks = [
        Check("requests", {"value": requests_query(runtime, sel.canary, window)}, analysis.min_requests, None, "pause"),
        Check(
            "latencyP99Ratio",
            {"canary": p99(sel.canary), "stable": p99(sel.stable)},
            None,
            analysis.latency_p99_ratio,
            policy,
        ),
    ]
    if runtime == "vllm":
        errors = (
            f'sum(rate(vllm:request_success_total{{{sel.canary},finished_reason="abort"}}[{window}]))'
            f" / sum(rate(vllm:request_success_total{{{sel.canary}}}[{window}]))"
        )
    else:
        errors = (
            f'sum(rate(kubetune_requests_total{{{sel.canary},status=~"5.."}}[{window}]))'
            f" / sum(rate(kubetune_requests_total{{{sel.canary}}}[{window}]))"
        )
    checks.append(Check("errorRate", {"value": errors}, None, analysis.max_error_rate, policy))
    if gpus > 0:
        if runtime == "vllm":
            # vLLM reserves its gpu-memory-utilization budget up front: judge usage against that budget.
            used, free = f"DCGM_FI_DEV_FB_USED{{{sel.canary}}}", f"DCGM_FI_DEV_FB_FREE{{{sel.canary}}}"
            gpu = f"max({used} / ({used} + {free}))"
            limit = min(analysis.max_gpu_memory_utilization, vllm_budget + 0.02)
        else:
            gpu = (
                f"max(kubetune_gpu_memory_used_bytes{{{sel.canary}}} / kubetune_gpu_memory_total_bytes{{{sel.canary}}})"
            )
            limit = analysis.max_gpu_memory_utilization
        checks.append(Check("gpuMemoryUtilization", {"value": gpu}, None, limit, policy))
    for q in analysis.queries:
        text = q["query"].replace("{{canary}}", sel.canary).replace("{{stable}}", sel.stable)
        checks.append(Check(q["name"], {"value": text}, q.get("min"), q.get("max"), q.get("noDataPolicy", policy)))
    return checks


def requests_query(runtime: str, canary: str, window: str) -> str:
    metric = (
        "vllm:e2e_request_latency_seconds_count" if runtime == "vllm" else "kubetune_request_duration_seconds_count"
    )
    return f"sum(increase({metric}{{{canary}}}[{window}]))"


def judge(check: Check, answers: dict[str, float | None]) -> Verdict:
    """Turn query answers into a verdict. `answers` maps role -> value (None: no data)."""
    threshold = _threshold_text(check)
    query = " ; ".join(check.queries.values())
    if any(not _usable(v) for v in answers.values()):
        missing = ", ".join(role for role, v in answers.items() if not _usable(v))
        return Verdict(check.name, NO_DATA, None, threshold, query, f"no data for {missing}")
    if "canary" in answers:
        canary, stable = answers["canary"], answers["stable"]
        assert canary is not None and stable is not None
        if stable <= 0:
            return Verdict(check.name, NO_DATA, None, threshold, query, "stable value is 0: ratio undefined")
        value: float = canary / stable
    else:
        single = answers["value"]
        assert single is not None
        value = single
    if check.name == "requests" and check.min is not None and value < check.min:
        return Verdict(check.name, NO_DATA, value, threshold, query, f"only {value:.0f} canary requests in the window")
    if check.min is not None and value < check.min:
        return Verdict(check.name, FAIL, value, threshold, query, f"{check.name} {value:.4g} < min {check.min:g}")
    if check.max is not None and value > check.max:
        return Verdict(check.name, FAIL, value, threshold, query, f"{check.name} {value:.4g} > max {check.max:g}")
    return Verdict(check.name, PASS, value, threshold, query, f"{check.name} {value:.4g} within {threshold}")


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _threshold_text(check: Check) -> str:
    parts = []
    if check.min is not None:
        parts.append(f">= {check.min:g}")
    if check.max is not None:
        parts.append(f"<= {check.max:g}")
    return " and ".join(parts)
