"""What a real Prometheus answers, as the operator's checks read it: several series, NaN, no series,
a PromQL syntax error (HTTP 400, its message kept) and a Prometheus that is not there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubetune_dev.processes import free_port
from kubetune_dev.prometheus import PrometheusServer, prometheus_binary_or_skip
from kubetune_operator import prometheus
from kubetune_operator.analysis import Check
from kubetune_operator.reconcile.md_analysis import judge_check

pytestmark = pytest.mark.slow

# Three "pods" as Prometheus itself can make them, without scraping anything.
PODS = (
    'label_replace(vector(0.001), "pod", "a", "", "")'
    ' or label_replace(vector(0.3), "pod", "b", "", "")'
    ' or label_replace(vector(0) / 0, "pod", "c", "", "")'
)


@pytest.fixture(scope="module")
def prom() -> Iterator[PrometheusServer]:
    with PrometheusServer(prometheus_binary_or_skip()) as p:
        yield p


def check(query: str) -> Check:
    return Check("custom", {"value": query}, None, 0.01, "pause")


def test_several_series_are_judged_on_the_worst(prom):
    samples = prometheus.query(prom.url, PODS)
    assert sorted(labels["pod"] for labels, _ in samples) == ["a", "b", "c"]
    v = judge_check(check(PODS), prom.url, 5)
    assert v.verdict == "Fail" and v.value == 0.3 and 'pod="b"' in v.message and "1 no data" in v.message
    with pytest.raises(prometheus.PrometheusQueryError, match="expected one series"):
        prometheus.query_value(prom.url, PODS)


@pytest.mark.parametrize("query", ["vector(0) / 0", "0 / 0", 'up{job="nothing-like-this"}'])
def test_nan_scalar_and_empty_results_are_no_data(prom, query):
    v = judge_check(check(query), prom.url, 5)
    assert v.verdict == "NoData", v.message


def test_promql_syntax_error_keeps_prometheus_message(prom):
    v = judge_check(check("sum(rate(up[1m])"), prom.url, 5)
    assert v.verdict == "Error" and "Prometheus rejected the query: bad_data:" in v.message
    assert "parse error" in v.message and "unavailable" not in v.message


def test_unreachable_prometheus_is_unavailable_not_a_bad_query():
    v = judge_check(check("up"), f"http://127.0.0.1:{free_port()}", 2)
    assert v.verdict == "Error" and v.message.startswith("Prometheus unavailable:")
