"""Canary analysis checks: the PromQL to ask and how to judge the answers (pure, no I/O).

A missing answer (empty result, NaN, Inf) is NoData, never 0: an idle canary has no latency, and
reading that as "fast" would promote it. Too few canary requests is NoData too, and then no other
check's Pass or Fail is acted on either (`gate`): minRequests comes before any verdict.

Latency is judged from the histogram's buckets, not from `histogram_quantile` alone. The P99 is
only known to lie in the bucket that holds it, so every ratio comes with bounds: canary P99 in
(lo_c, hi_c], stable in (lo_s, hi_s] -> ratio in [lo_c/hi_s, hi_c/lo_s]. Bounds on one side of the
threshold decide. When they straddle it, the interpolated value decides only if both buckets are
fine (at most FINE_BUCKET wide, as the builtin server's 5 % buckets are everywhere: an interpolation
error under the threshold's margin); with coarse buckets (vLLM's) the analysis is inconclusive,
NoData under the check's no-data policy, never a Pass or a Fail.

A check whose metric a server does not export by design (GPU memory on a server without a GPU) is
Skipped, not NoData: `presence` queries tell "the canary exports no such series at all" from "the
canary is not scraped yet".

User ratings are an A/B check too (`userRatingDrop`): the mean of the ratings posted in the window,
canary vs stable, from the servers' feedback counters. Fewer than minFeedback ratings on either side
is NoData: a mean of three ratings says more about three users than about the version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kubetune_operator.prometheus import Sample
from kubetune_operator.serving_spec import Analysis

PASS, FAIL, NO_DATA, ERROR, SKIPPED = "Pass", "Fail", "NoData", "Error", "Skipped"
VALUE, QUANTILE_RATIO, RATING_DROP = "value", "quantileRatio", "ratingDrop"
QUANTILE = 0.99
# A bucket at most this wide (upper/lower bound) pins its quantile to within 6 %: fine enough to
# judge the interpolated value against a threshold like 1.2 whose margin is 20 %.
FINE_BUCKET = 1.06
# What vLLM exports for vllm:e2e_request_latency_seconds (vllm-project/vllm, vllm/v1/metrics/loggers.py,
# `request_latency_buckets`; vllm/engine/metrics.py in v0 has the same list). 20-60 % wide around
# typical latencies, so near the threshold many ratios are inconclusive. The analysis itself reads
# the bounds from the `le` labels it gets back, so a vLLM release that changes them is judged right.
VLLM_E2E_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass(frozen=True)
class Check:
    name: str
    queries: dict[str, str]  # role -> PromQL; a quantile ratio has "canary" and "stable" bucket queries
    min: float | None
    max: float | None
    policy: str  # what NoData/Error count as: pause | fail | pass
    kind: str = VALUE
    gate: bool = False  # below min is NoData, and then no other check's verdict is acted on
    # role -> PromQL asked alongside: "exported" (any series of the metric for the canary) and
    # "scraped" (any series of the canary at all). Empty "exported" with a non-empty "scraped" is Skipped.
    presence: dict[str, str] = field(default_factory=dict)
    skip_reason: str = ""
    min_count: int = 0  # a rating drop: fewer ratings than this on either side is NoData (minFeedback)


@dataclass(frozen=True)
class Verdict:
    check: str
    verdict: str
    value: float | None
    threshold: str
    query: str
    message: str
    low: float | None = None  # bounds of the value when it is read from histogram buckets
    high: float | None = None
    gate: bool = False


@dataclass(frozen=True)
class Selectors:
    """PromQL label matchers picking each track's series."""

    canary: str
    stable: str
    # Feedback is counted under the version of the response it rates (read from the response id), not
    # of the pod it reached: the rating check picks by version on every runtime. "": canary/stable.
    canary_feedback: str = ""
    stable_feedback: str = ""


@dataclass(frozen=True)
class Quantile:
    """A quantile read from cumulative buckets: `low < true quantile <= high`; `value` is the
    linear interpolation inside that bucket, the number `histogram_quantile` returns."""

    value: float
    low: float
    high: float

    @property
    def fine(self) -> bool:
        return self.low > 0 and math.isfinite(self.high) and self.high / self.low <= FINE_BUCKET


def selectors_for(runtime: str, namespace: str, md: str, canary_version: str, stable_version: str) -> Selectors:
    """The builtin server labels its metrics with `version`; vLLM does not know its track, so its
    series are told apart by pod name (the `pod` label Prometheus' Kubernetes discovery adds). Its
    capture proxy labels feedback with the version, as the builtin server does."""
    versions = f'version="{canary_version}"', f'version="{stable_version}"'
    if runtime == "vllm":
        pods = f'namespace="{namespace}",pod=~"{md}-canary-.+"', f'namespace="{namespace}",pod=~"{md}-stable-.+"'
        return Selectors(*pods, *versions)
    return Selectors(*versions, *versions)


def build_checks(
    analysis: Analysis, runtime: str, sel: Selectors, window: str, gpus: int, vllm_budget: float
) -> list[Check]:
    latency = (
        "vllm:e2e_request_latency_seconds_bucket" if runtime == "vllm" else "kubetune_request_duration_seconds_bucket"
    )

    def buckets(s: str) -> str:
        return f"sum by (le) (rate({latency}{{{s}}}[{window}]))"

    policy = analysis.no_data_policy
    checks = [
        Check(
            "requests",
            {"value": requests_query(runtime, sel.canary, window)},
            analysis.min_requests,
            None,
            "pause",
            gate=True,
        ),
        Check(
            "latencyP99Ratio",
            {"canary": buckets(sel.canary), "stable": buckets(sel.stable)},
            None,
            analysis.latency_p99_ratio,
            policy,
            kind=QUANTILE_RATIO,
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
    if analysis.max_user_rating_drop is not None:
        checks.append(rating_check(analysis, sel, window))
    if gpus > 0:
        if runtime == "vllm":
            # vLLM reserves its gpu-memory-utilization budget up front: judge usage against that budget.
            # DCGM series come from a separate exporter: their absence is a monitoring gap, not by design.
            used, free = f"DCGM_FI_DEV_FB_USED{{{sel.canary}}}", f"DCGM_FI_DEV_FB_FREE{{{sel.canary}}}"
            gpu = f"max({used} / ({used} + {free}))"
            limit = min(analysis.max_gpu_memory_utilization, vllm_budget + 0.02)
            checks.append(Check("gpuMemoryUtilization", {"value": gpu}, None, limit, policy))
        else:
            # The builtin server exports its GPU gauges only when its model is on CUDA (see
            # kubetune_server.metrics): a canary that serves but has none runs on CPU.
            gpu = (
                f"max(kubetune_gpu_memory_used_bytes{{{sel.canary}}} / kubetune_gpu_memory_total_bytes{{{sel.canary}}})"
            )
            presence = {
                "exported": f"count(kubetune_gpu_memory_total_bytes{{{sel.canary}}})",
                "scraped": f"count(kubetune_requests_total{{{sel.canary}}})",
            }
            reason = "the canary's server exports no GPU memory series (its model is not on a GPU)"
            checks.append(
                Check(
                    "gpuMemoryUtilization",
                    {"value": gpu},
                    None,
                    analysis.max_gpu_memory_utilization,
                    policy,
                    presence=presence,
                    skip_reason=reason,
                )
            )
    for q in analysis.queries:
        text = q["query"].replace("{{canary}}", sel.canary).replace("{{stable}}", sel.stable)
        checks.append(Check(q["name"], {"value": text}, q.get("min"), q.get("max"), q.get("noDataPolicy", policy)))
    return checks


def rating_check(analysis: Analysis, sel: Selectors, window: str) -> Check:
    """Canary vs stable mean rating over the window. The builtin server and the capture proxy in a vLLM
    pod export the same two counters, labelled with the rated response's version on both runtimes.
    Summed over pods (feedback for a canary response may reach a stable pod): every rating weighs one."""

    def total(what: str, s: str) -> str:
        return f"sum(increase(kubetune_feedback_rating_{what}{{{s}}}[{window}]))"

    queries = {}
    for track, s in (("canary", sel.canary_feedback or sel.canary), ("stable", sel.stable_feedback or sel.stable)):
        queries[track] = f"{total('sum', s)} / {total('count', s)}"
        queries[f"{track}Count"] = total("count", s)
    drop = analysis.max_user_rating_drop
    policy = analysis.no_data_policy
    return Check("userRatingDrop", queries, None, drop, policy, kind=RATING_DROP, min_count=analysis.min_feedback)


def requests_query(runtime: str, canary: str, window: str) -> str:
    metric = (
        "vllm:e2e_request_latency_seconds_count" if runtime == "vllm" else "kubetune_request_duration_seconds_count"
    )
    return f"sum(increase({metric}{{{canary}}}[{window}]))"


# -- judging ---------------------------------------------------------------------------------------
def judge(check: Check, answers: dict[str, list[Sample]]) -> Verdict:
    """Turn query answers (role -> samples, presence roles included) into a verdict."""
    if check.kind == QUANTILE_RATIO:
        return _judge_ratio(check, answers)
    if check.kind == RATING_DROP:
        return _judge_rating(check, answers)
    return _judge_value(check, answers)


def error_verdict(check: Check, message: str) -> Verdict:
    return Verdict(check.name, ERROR, None, _threshold_text(check), _query_text(check), message, gate=check.gate)


def _judge_ratio(check: Check, answers: dict[str, list[Sample]]) -> Verdict:
    threshold, query = _threshold_text(check), _query_text(check)
    q = {role: histogram_quantile(QUANTILE, answers.get(role, [])) for role in ("canary", "stable")}
    missing = [role for role, v in q.items() if v is None]
    if missing:
        return Verdict(check.name, NO_DATA, None, threshold, query, f"no data for {', '.join(missing)}")
    canary, stable = q["canary"], q["stable"]
    assert canary is not None and stable is not None
    if stable.value <= 0:
        return Verdict(check.name, NO_DATA, None, threshold, query, "stable value is 0: ratio undefined")
    value = canary.value / stable.value
    low = canary.low / stable.high if math.isfinite(stable.high) else 0.0
    high = canary.high / stable.low if stable.low > 0 else math.inf
    where = f"canary P99 in ({_s(canary.low)}, {_s(canary.high)}], stable in ({_s(stable.low)}, {_s(stable.high)}]"
    bounds = f"ratio {value:.4g}, between {low:.4g} and {high:.4g} ({where})"
    surely = _side(check, low, high)
    if surely is None and canary.fine and stable.fine:
        surely = _side(check, value, value)  # fine buckets: the interpolation is within FINE_BUCKET
    finite_high = high if math.isfinite(high) else None
    if surely is None:
        message = f"inconclusive: {bounds} straddles {threshold}; the histogram's buckets are too coarse to decide"
        return Verdict(check.name, NO_DATA, value, threshold, query, message, low, finite_high)
    verb = "outside" if surely == FAIL else "within"
    message = f"{check.name} {bounds} {verb} {threshold}"
    return Verdict(check.name, surely, value, threshold, query, message, low, finite_high)


def _judge_rating(check: Check, answers: dict[str, list[Sample]]) -> Verdict:
    threshold, query = _threshold_text(check), _query_text(check)
    tracks = ("canary", "stable")
    # increase() extrapolates to the window's edges, so a count is rarely a whole number: shown rounded.
    counts = {t: _finite(answers.get(f"{t}Count", [])) or 0.0 for t in tracks}
    few = [f"{t} {counts[t]:.0f}" for t in tracks if counts[t] < check.min_count]
    if few:
        message = f"too few user ratings in the window ({', '.join(few)}; minFeedback {check.min_count})"
        return Verdict(check.name, NO_DATA, None, threshold, query, message)
    canary, stable = (_finite(answers.get(t, [])) for t in tracks)
    if canary is None or stable is None:
        return Verdict(check.name, NO_DATA, None, threshold, query, "no data for the mean user rating")
    drop = stable - canary
    n = {t: f"{c:.0f}" for t, c in counts.items()}
    ratings = f"canary mean rating {canary:.3g} of {n['canary']} ratings, stable {stable:.3g} of {n['stable']}"
    failed = check.max is not None and drop > check.max
    where = f"> max {check.max:g}" if failed else f"within {threshold}"
    message = f"user rating drop {drop:.3g} {where} ({ratings})"
    return Verdict(check.name, FAIL if failed else PASS, drop, threshold, query, message)


def _finite(samples: list[Sample]) -> float | None:
    """The value of a one-series answer (a `sum(...)`), None when there is none or it is NaN/Inf."""
    values = [v for _, v in samples if math.isfinite(v)]
    return values[0] if values else None


def _judge_value(check: Check, answers: dict[str, list[Sample]]) -> Verdict:
    threshold, query = _threshold_text(check), _query_text(check)
    samples = answers.get("value", [])
    usable = [(labels, v) for labels, v in samples if math.isfinite(v)]
    if not usable:
        if check.presence and not answers.get("exported") and answers.get("scraped"):
            return Verdict(check.name, SKIPPED, None, threshold, query, f"skipped: {check.skip_reason}")
        why = "no series" if not samples else f"{len(samples)} series, none a finite number"
        return Verdict(check.name, NO_DATA, None, threshold, query, f"no data ({why})", gate=check.gate)
    # Several series (e.g. one per pod): each is judged, the one with the least room decides.
    labels, value = min(usable, key=lambda s: _slack(check, s[1]))
    which = ""
    if len(samples) > 1:
        bad = sum(1 for _, v in usable if _slack(check, v) < 0)
        nan = len(samples) - len(usable)
        nodata = f", {nan} no data" if nan else ""
        which = f" (worst of {len(samples)} series: {_labels(labels)}; {bad} outside{nodata})"
    if check.gate and check.min is not None and value < check.min:
        message = f"only {value:.0f} canary requests in the window (minRequests {check.min:g})"
        return Verdict(check.name, NO_DATA, value, threshold, query, message, gate=True)
    if check.min is not None and value < check.min:
        message = f"{check.name} {value:.4g} < min {check.min:g}{which}"
        return Verdict(check.name, FAIL, value, threshold, query, message, gate=check.gate)
    if check.max is not None and value > check.max:
        message = f"{check.name} {value:.4g} > max {check.max:g}{which}"
        return Verdict(check.name, FAIL, value, threshold, query, message, gate=check.gate)
    message = f"{check.name} {value:.4g} within {threshold}{which}"
    return Verdict(check.name, PASS, value, threshold, query, message, gate=check.gate)


def gate(verdicts: list[Verdict]) -> list[Verdict]:
    """minRequests comes before any verdict: while a gate check is not Pass, every other Pass or Fail
    becomes NoData (what it would have been stays in the message). Errors and Skipped stay as they are:
    they say something about the query, not about the canary."""
    closed = [v for v in verdicts if v.gate and v.verdict != PASS]
    if not closed:
        return verdicts
    why = "; ".join(v.message for v in closed)
    return [
        replace(v, verdict=NO_DATA, message=f"not acted on ({why}); would be {v.verdict}: {v.message}")
        if not v.gate and v.verdict in (PASS, FAIL)
        else v
        for v in verdicts
    ]


def histogram_quantile(q: float, buckets: list[Sample]) -> Quantile | None:
    """The q-quantile of cumulative bucket samples (`le` label -> count or rate), as Prometheus'
    histogram_quantile computes it, with the bucket that holds it. None: no +Inf bucket or no
    observations (an idle canary).

    >>> b = [({"le": "0.5"}, 2.0), ({"le": "1"}, 10.0), ({"le": "+Inf"}, 10.0)]
    >>> histogram_quantile(0.5, b)
    Quantile(value=0.6875, low=0.5, high=1.0)
    """
    bounds: list[tuple[float, float]] = []
    for labels, count in buckets:
        try:
            bounds.append((float(labels["le"]), count))
        except (KeyError, ValueError):
            continue
    bounds.sort()
    if len(bounds) < 2 or not math.isinf(bounds[-1][0]) or not all(math.isfinite(c) for _, c in bounds):
        return None
    cumulative, top = [], 0.0
    for le, count in bounds:
        top = max(top, count)  # rates of separately scraped buckets can dip; Prometheus evens them the same way
        cumulative.append((le, top))
    total = cumulative[-1][1]
    if total <= 0:
        return None
    rank = q * total
    i = next(i for i, (_, c) in enumerate(cumulative) if c >= rank)
    lower, below = (0.0, 0.0) if i == 0 else cumulative[i - 1]
    upper, count = cumulative[i]
    if math.isinf(upper):  # above the largest finite bound: Prometheus answers that bound
        return Quantile(lower, lower, math.inf)
    value = upper if count <= below else lower + (upper - lower) * (rank - below) / (count - below)
    return Quantile(value, lower, upper)


def _side(check: Check, low: float, high: float) -> str | None:
    """PASS or FAIL when the whole interval [low, high] is on one side of the bounds, else None."""
    if (check.max is not None and low > check.max) or (check.min is not None and high < check.min):
        return FAIL
    if (check.max is None or high <= check.max) and (check.min is None or low >= check.min):
        return PASS
    return None


def _slack(check: Check, value: float) -> float:
    """How far `value` is inside the bounds (negative: outside)."""
    room = math.inf
    if check.max is not None:
        room = min(room, check.max - value)
    if check.min is not None:
        room = min(room, value - check.min)
    return room


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _s(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds:.4g}s"


def _query_text(check: Check) -> str:
    return " ; ".join(check.queries.values())


def _threshold_text(check: Check) -> str:
    parts = []
    if check.min is not None:
        parts.append(f">= {check.min:g}")
    if check.max is not None:
        parts.append(f"<= {check.max:g}")
    return " and ".join(parts)
