"""The builtin server's latency buckets are fine enough for a 1.2 P99 ratio at every latency (pure)."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from kubetune_operator.analysis import FINE_BUCKET, histogram_quantile
from kubetune_server.metrics import LATENCY_BUCKETS, ServerMetrics

MAX_ERROR = 0.051  # the bound the comment on LATENCY_BUCKETS promises


def test_buckets_are_five_percent_wide_from_5ms_to_60s():
    widths = [hi / lo for lo, hi in itertools.pairwise(LATENCY_BUCKETS)]
    assert LATENCY_BUCKETS[0] == 0.005 and LATENCY_BUCKETS[-1] >= 60
    assert max(widths) <= 1 + MAX_ERROR and min(widths) >= 1.049
    assert max(widths) <= FINE_BUCKET  # so the analysis judges the builtin server's ratios by value
    assert len(LATENCY_BUCKETS) <= 200


@pytest.mark.parametrize("latency", [0.0051, 0.0123, 0.095, 0.3, 0.95, 0.999, 1.0, 1.001, 1.37, 7.7, 59.0])
def test_p99_from_the_servers_own_exposition_is_within_the_promised_error(latency):
    metrics = ServerMetrics("v")
    for i in range(200):
        metrics.observe_request(200, latency * (1 + 0.002 * (i % 5)))  # a little spread, as in real life
    text = metrics.exposition().decode()
    samples = [
        ({"le": le}, float(count))
        for le, count in re.findall(r'kubetune_request_duration_seconds_bucket\{le="([^"]+)",version="v"\} (\S+)', text)
    ]
    q = histogram_quantile(0.99, samples)
    assert q is not None and q.low < latency * 1.008 <= q.high * 1.0000001
    true_p99 = latency * 1.008
    assert abs(q.value / true_p99 - 1) < MAX_ERROR, q
    assert math.isfinite(q.high) and q.high / q.low <= 1 + MAX_ERROR
