"""Stable and canary servers scraped by a real Prometheus: the canary's slowness and errors show in PromQL.

This is the measurement a Prometheus-gated rollout relies on: one job, two versions told apart by the
``version`` label, latency quantiles from histogram buckets, error ratios from status counters, and
"no data" kept distinct from 0.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import pytest

from kubetune_dev.loadgen import run_load
from kubetune_dev.prometheus import PrometheusServer, prometheus_binary_or_skip
from tests.serving.server_process import ServerProcess

pytestmark = pytest.mark.slow

WINDOW = "30s"  # covers the whole load phase, so the rates below see every request
CANARY_LATENCY_MS = 400
CANARY_ERROR_RATE = 0.2
P99 = f"histogram_quantile(0.99, sum by (le, version) (rate(kubetune_request_duration_seconds_bucket[{WINDOW}])))"
ERROR_RATIO = (
    f'sum by (version) (rate(kubetune_requests_total{{status=~"5.."}}[{WINDOW}]))'
    f" / sum by (version) (rate(kubetune_requests_total[{WINDOW}]))"
)
REQUESTS = "sum by (version) (kubetune_requests_total)"


def p99_of(version: str) -> str:
    return (
        "histogram_quantile(0.99, sum by (le, version) "
        f'(rate(kubetune_request_duration_seconds_bucket{{version="{version}"}}[{WINDOW}])))'
    )


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def test_canary_latency_and_errors_visible_in_promql(tiny_model_dir: Path, lora_adapter_dir: Path) -> None:
    binary = prometheus_binary_or_skip()
    stable = ServerProcess(tiny_model_dir, version="stable", adapter=lora_adapter_dir)
    canary = ServerProcess(
        tiny_model_dir,
        "--inject-latency-ms",
        str(CANARY_LATENCY_MS),
        "--inject-error-rate",
        str(CANARY_ERROR_RATE),
        version="canary",
        adapter=lora_adapter_dir,
    )
    with contextlib.ExitStack() as stack:
        for server in (stable, canary):
            server.start()
            stack.callback(server.stop)
        prom = stack.enter_context(PrometheusServer(binary))  # starts while the models load
        stable.wait_ready()
        canary.wait_ready()
        prom.set_targets([(stable.hostport, {"role": "stable"}), (canary.hostport, {"role": "canary"})])
        prom.wait_for_targets(2)

        # Scraped but idle: the series exist at 0, so the quantile is NaN (0/0), which is "no data" too.
        def both_scraped_twice() -> dict[str, float] | None:
            result = prom.query_by(P99, "version")
            return result if len(result) == 2 else None

        idle = wait_for(both_scraped_twice, 30, "two scrapes of both targets")
        assert set(idle) == {"stable", "canary"}
        assert all(math.isnan(v) for v in idle.values()), idle
        # A version nobody runs has no series at all: an empty result, never 0.
        assert prom.query(p99_of("v3")) == []
        assert prom.query(f'sum(rate(kubetune_requests_total{{version="v3"}}[{WINDOW}]))') == []

        load = run_load({stable.url: 1, canary.url: 1}, max_requests=60, max_duration=15, concurrency=3)
        sent = {
            "stable": load.by_target()[stable.url].count,
            "canary": load.by_target()[canary.url].count,
        }
        assert 0 not in load.by_target()[stable.url].statuses, "connection errors"
        # Wait for a scrape after the last request: Prometheus then counts what the load generator sent.
        wait_for(lambda: prom.query_by(REQUESTS, "version") == sent, 15, f"Prometheus to count {sent}")

        p99 = prom.query_by(P99, "version")
        errors = prom.query_by(ERROR_RATIO, "version")
        print(f"sent={sent} load={load.seconds:.1f}s p99={p99} error_ratio={errors}")
        client = {name: s.quantile(0.99) for name, s in load.by_target().items()}
        print(f"client-side p99: {client}")

        assert p99["canary"] >= CANARY_LATENCY_MS / 1000
        assert p99["canary"] - p99["stable"] >= CANARY_LATENCY_MS / 2000, p99
        assert errors["stable"] == 0  # a 0 here is data: stable served traffic and none of it failed
        # The injector fails exactly floor(n * rate) of n requests, and Prometheus agrees.
        canary_500s = load.by_target()[canary.url].statuses[500]
        assert canary_500s == math.floor(sent["canary"] * CANARY_ERROR_RATE)
        assert errors["canary"] == pytest.approx(canary_500s / sent["canary"], rel=0.05)
        assert prom.query(p99_of("v3")) == []
