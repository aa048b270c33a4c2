"""A small, bounded load generator for serving tests: weighted traffic to loopback servers.

    result = run_load({"http://127.0.0.1:8001": 9, "http://127.0.0.1:8002": 1},
                      max_requests=60, max_duration=10, concurrency=2)
    result.by_target()["http://127.0.0.1:8002"].statuses   # Counter({200: 5, 500: 1})

It stops issuing requests at whichever comes first, ``max_requests`` or ``max_duration`` (a request
in flight then may take up to ``timeout`` more), and refuses anything but
loopback addresses, so a typo cannot turn a test into traffic against a real service. Each worker
thread picks a target per request by weight (seeded, so a run is repeatable) and records its status
and latency; connection errors are recorded as status 0, never raised.
"""

from __future__ import annotations

import ipaddress
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Record:
    target: str
    status: int  # HTTP status, 0 for a connection error or timeout
    seconds: float


@dataclass
class TargetStats:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile of the recorded latencies.

        >>> TargetStats(latencies=[0.1, 0.2, 0.3, 0.4]).quantile(0.5)
        0.2
        """
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


@dataclass
class LoadResult:
    records: list[Record]
    seconds: float

    def by_target(self) -> dict[str, TargetStats]:
        out: dict[str, TargetStats] = {}
        for r in self.records:
            stats = out.setdefault(r.target, TargetStats())
            stats.statuses[r.status] += 1
            stats.latencies.append(r.seconds)
        return out


def check_loopback(base_url: str) -> None:
    """Reject any URL whose host is not a loopback address.

    >>> check_loopback("http://127.0.0.1:8000")
    >>> check_loopback("http://example.com")
    Traceback (most recent call last):
    ...
    ValueError: load generator only targets loopback, not 'example.com'
    """
    host = urllib.parse.urlsplit(base_url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host in LOOPBACK_NAMES
    if not ok:
        raise ValueError(f"load generator only targets loopback, not {host!r}")


def completion_body(prompt: str = "A pod is", max_tokens: int = 4) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


def post_json(url: str, body: dict[str, Any], timeout: float) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


def run_load(
    targets: dict[str, float],
    max_requests: int,
    max_duration: float,
    concurrency: int = 2,
    body: dict[str, Any] | None = None,
    path: str = "/v1/completions",
    timeout: float = 30,
    seed: int = 0,
) -> LoadResult:
    """POST ``body`` to ``base_url + path`` for base URLs picked by weight; stop at the first bound."""
    if max_requests < 1 or max_duration <= 0 or concurrency < 1:
        raise ValueError("max_requests, max_duration and concurrency must be positive")
    if not targets or any(w < 0 for w in targets.values()) or sum(targets.values()) <= 0:
        raise ValueError(f"targets need non-negative weights with a positive sum, got {targets}")
    for url in targets:
        check_loopback(url)
    body = body or completion_body()
    urls, weights = list(targets), list(targets.values())
    records: list[Record] = []
    lock = threading.Lock()
    issued = 0
    start = time.monotonic()
    deadline = start + max_duration

    def take() -> bool:
        nonlocal issued
        with lock:
            if issued >= max_requests or time.monotonic() >= deadline:
                return False
            issued += 1
            return True

    def worker(rng: random.Random) -> None:
        while take():
            base = rng.choices(urls, weights)[0]
            t0 = time.monotonic()
            status = post_json(base.rstrip("/") + path, body, timeout)
            record = Record(base, status, time.monotonic() - t0)
            with lock:
                records.append(record)

    threads = [
        threading.Thread(target=worker, args=(random.Random(seed + i),), daemon=True) for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_duration + timeout + 5)
    with lock:
        return LoadResult(list(records), time.monotonic() - start)
