"""Prometheus metrics of one server, every kubetune_* series labelled ``version``.

The label comes from ``--version`` (e.g. ``stable`` / ``canary``), so a canary analysis can compare
the two even when both are scraped by one job. Series are created at start-up with value 0, so
``rate()`` sees a request that arrives right after a scrape, and a version that serves no traffic
still exposes its series: its ``rate()`` is 0 and its ``histogram_quantile()`` is NaN (no data),
while a version that is not running at all returns an empty result.

- ``kubetune_request_duration_seconds``: end to end, from the request's arrival to its response
  being ready, for every /v1 generation request whatever its status (so injected latency counts).
- ``kubetune_time_to_first_token_seconds``: arrival to the first generated token's logits (includes
  waiting for the generation lock and any injected latency); successful generations only.
- ``kubetune_prompt_tokens_total`` / ``kubetune_generation_tokens_total``: tokens in and out.
- ``kubetune_requests_total{status}``: every /v1 generation request by HTTP status code.
- ``kubetune_requests_in_flight``: /v1 generation requests being handled now.
- ``process_resident_memory_bytes`` & co.: prometheus-client's process collector (Linux only; no
  version label, the scrape target's labels tell processes apart).
- ``kubetune_feedback_rating_sum`` / ``_count`` (a summary: counters of the ratings' sum and number),
  ``kubetune_feedback_total{kind}`` (up >= 4, down <= 2, neutral, correction): feedback received,
  labelled with the version of the response it rates (read from its id), not of the pod it reached.
- ``kubetune_capture_records_total{kind}`` (request, feedback): records written to capture files;
  ``kubetune_capture_dropped_total{reason}`` (full, unwritable, upload, queue, too_large): not written.
- ``kubetune_gpu_memory_used_bytes`` / ``kubetune_gpu_memory_total_bytes``: the CUDA device's memory
  as the driver reports it (all processes on it), read at scrape time. Absent on CPU: no GPU is not
  0 bytes of GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4


def exponential_buckets(start: float, factor: float, stop: float) -> tuple[float, ...]:
    """start, start*factor, ... up to the first bound >= stop, each rounded to 4 significant digits.

    >>> exponential_buckets(1.0, 2.0, 5.0)
    (1.0, 2.0, 4.0, 8.0)
    """
    out, x = [], start
    while True:
        out.append(float(f"{x:.4g}"))
        if x >= stop:
            return tuple(out)
        x *= factor


# 5 ms .. 60 s in steps of 5 % (194 bounds). A quantile lies in one bucket and histogram_quantile
# interpolates inside it, so between 5 ms and 60 s its relative error is under 5.1 % (the factor plus
# the rounding): well under the 20 % margin of a latencyP99Ratio of 1.2, at every latency. The
# operator's analysis judges the interpolated ratio only when both buckets are this fine.
LATENCY_FACTOR = 1.05
LATENCY_BUCKETS = exponential_buckets(0.005, LATENCY_FACTOR, 60.0)
# Statuses the server can answer a generation request with; created up front so their rate is 0, not absent.
KNOWN_STATUSES = ("200", "400", "404", "500", "503")
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class ServerMetrics:
    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.version = version
        r, v = self.registry, ["version"]
        self._duration = Histogram(
            "kubetune_request_duration_seconds",
            "End-to-end latency of generation requests (any status).",
            v,
            registry=r,
            buckets=LATENCY_BUCKETS,
        ).labels(version)
        self._ttft = Histogram(
            "kubetune_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
            v,
            registry=r,
            buckets=LATENCY_BUCKETS,
        ).labels(version)
        self._prompt_tokens = Counter("kubetune_prompt_tokens", "Prompt tokens processed.", v, registry=r).labels(
            version
        )
        self._generation_tokens = Counter("kubetune_generation_tokens", "Tokens generated.", v, registry=r).labels(
            version
        )
        self._requests = Counter(
            "kubetune_requests", "Generation requests by HTTP status.", ["version", "status"], registry=r
        )
        for status in KNOWN_STATUSES:
            self._requests.labels(version, status)
        self.in_flight = Gauge(
            "kubetune_requests_in_flight", "Generation requests being handled.", v, registry=r
        ).labels(version)
        ProcessCollector(registry=r)
        self.capture = CaptureMetrics(version, r)

    def observe_request(self, status: int, seconds: float) -> None:
        self._requests.labels(self.version, str(status)).inc()
        self._duration.observe(seconds)

    def observe_generation(self, prompt_tokens: int, generated_tokens: int, ttft_seconds: float | None) -> None:
        self._prompt_tokens.inc(prompt_tokens)
        self._generation_tokens.inc(generated_tokens)
        if ttft_seconds is not None:
            self._ttft.observe(ttft_seconds)

    def add_gpu_memory(self, used: Callable[[], float], total: Callable[[], float]) -> None:
        """Register the GPU gauges; called only when the model is on CUDA."""
        v = ["version"]
        Gauge("kubetune_gpu_memory_used_bytes", "GPU memory in use on the device.", v, registry=self.registry).labels(
            self.version
        ).set_function(used)
        Gauge("kubetune_gpu_memory_total_bytes", "GPU memory of the device.", v, registry=self.registry).labels(
            self.version
        ).set_function(total)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


FEEDBACK_KINDS = ("up", "down", "neutral", "correction")
DROP_REASONS = ("full", "unwritable", "upload", "queue", "too_large")
# Feedback is labelled with the version its id names, which a client chooses: past this many versions a
# new one is written to the files but not given series of its own (the metrics stay bounded).
MAX_FEEDBACK_VERSIONS = 16


class CaptureMetrics:
    """Feedback and capture series; also the capture proxy's (which has no request histograms of its own)."""

    def __init__(self, version: str, registry: CollectorRegistry) -> None:
        r, v = registry, ["version"]
        self._rating = Summary("kubetune_feedback_rating", "Ratings (1..5) received, by rated version.", v, registry=r)
        self._feedback = Counter("kubetune_feedback", "Feedback received, by kind.", ["version", "kind"], registry=r)
        self._records = Counter(
            "kubetune_capture_records", "Records written to capture files.", ["version", "kind"], registry=r
        )
        self._dropped = Counter(
            "kubetune_capture_dropped", "Records not captured, by reason.", ["version", "reason"], registry=r
        )
        self._versions: set[str] = set()
        self._lock = threading.Lock()
        self._seed(version)
        for kind in ("request", "feedback"):
            self._records.labels(version, kind)
        for reason in DROP_REASONS:
            self._dropped.labels(version, reason)

    def _seed(self, version: str) -> bool:
        with self._lock:
            if version not in self._versions:
                if len(self._versions) >= MAX_FEEDBACK_VERSIONS:
                    return False
                self._versions.add(version)
                self._rating.labels(version)
                for kind in FEEDBACK_KINDS:
                    self._feedback.labels(version, kind)
        return True

    def feedback(self, version: str, rating: int | None, corrected: bool) -> None:
        if not self._seed(version):
            return
        if rating is not None:
            self._rating.labels(version).observe(rating)
            kind = "up" if rating >= 4 else "down" if rating <= 2 else "neutral"
            self._feedback.labels(version, kind).inc()
        if corrected:
            self._feedback.labels(version, "correction").inc()

    def written(self, version: str, kind: str, n: int = 1) -> None:
        self._records.labels(version, kind).inc(n)

    def dropped(self, version: str, reason: str, n: int = 1) -> None:
        self._dropped.labels(version, reason).inc(n)
