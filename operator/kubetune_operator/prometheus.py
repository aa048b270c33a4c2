"""The one Prometheus call the operator makes: an instant query, answered as a number or None."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request


class PrometheusUnavailable(Exception):
    """Prometheus could not be asked (down, timeout, bad answer): an error, not a failed check."""


def query_value(address: str, promql: str, timeout: float = 5.0) -> float | None:
    """The single value of `promql`, or None when the result is empty or not a finite number."""
    url = f"{address.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        raise PrometheusUnavailable(f"{address}: {err}") from err
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"{address}: {body.get('error', 'query failed')}")
    result = body["data"]["result"]
    if body["data"].get("resultType") == "scalar":
        value = float(result[1])
    elif not result:
        return None
    else:
        value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None
