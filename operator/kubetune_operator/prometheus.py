"""The one Prometheus call the operator makes: an instant query, answered as samples.

Two ways a query can go wrong, told apart because they mean different things to a user:
Prometheus could not be asked (down, timeout, 5xx: wait and retry), or Prometheus refused the
query (4xx, e.g. a PromQL syntax error in a custom check: fix the spec). The second carries
Prometheus' own message.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request

Sample = tuple[dict[str, str], float]


class PrometheusUnavailable(Exception):
    """Prometheus could not be asked (down, timeout, 5xx, unreadable answer): an error, not a failed check."""


class PrometheusQueryError(Exception):
    """Prometheus answered and refused the query (HTTP 4xx): the message is Prometheus' own."""


def query(address: str, promql: str, timeout: float = 5.0) -> list[Sample]:
    """Every series of an instant query as (labels, value); a scalar is one sample with no labels.

    Values are kept as Prometheus sent them (NaN and Inf included): judging them is the caller's job.
    """
    url = f"{address.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        if 400 <= err.code < 500:
            raise PrometheusQueryError(_error_text(err)) from err
        raise PrometheusUnavailable(f"{address}: HTTP {err.code}: {_error_text(err)}") from err
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        raise PrometheusUnavailable(f"{address}: {err}") from err
    if body.get("status") != "success":
        raise PrometheusQueryError(f"{body.get('errorType', 'error')}: {body.get('error', 'query failed')}")
    data = body.get("data") or {}
    result = data.get("result") or []
    if data.get("resultType") == "scalar":
        return [({}, float(result[1]))]
    if data.get("resultType") != "vector":
        raise PrometheusQueryError(f"the query returned a {data.get('resultType')}, not an instant vector or scalar")
    return [(dict(s.get("metric") or {}), float(s["value"][1])) for s in result]


def query_value(address: str, promql: str, timeout: float = 5.0) -> float | None:
    """The single value of `promql`, or None when the result is empty or not a finite number.

    For queries that aggregate to one series; a result of several series is refused rather than
    judged on whichever came first.
    """
    samples = query(address, promql, timeout)
    if not samples:
        return None
    if len(samples) > 1:
        raise PrometheusQueryError(f"expected one series, got {len(samples)}: aggregate the query (e.g. max(...))")
    value = samples[0][1]
    return value if math.isfinite(value) else None


def _error_text(err: urllib.error.HTTPError) -> str:
    """Prometheus' JSON error body (`errorType: error`), else the raw body or the HTTP reason."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        body = json.loads(raw)
        return f"{body.get('errorType', 'error')}: {body['error']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw.decode(errors="replace").strip()[:500] or str(err.reason)
