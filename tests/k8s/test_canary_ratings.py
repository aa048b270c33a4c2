"""A canary its users rate worse is rolled back, end to end, with real parts only.

As in test_canary_prometheus.py (whose fixtures and helpers this reuses): the operator against the real
apiserver, the local executor running each pod as a real builtin server, a real Prometheus scraping
them. Raters ask every Ready pod for completions (the only load: it meets minRequests) and post a
rating for each answer to a pod picked at random, as a Service spreads feedback: 5 for stable's
answers, 1 for the canary's. The interval is long enough for minFeedback on a busy machine.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from kubetune_dev.loadgen import completion_body
from kubetune_dev.local_executor import ExecutorProcess
from tests.k8s.conftest import wait_for
from tests.k8s.test_canary_prometheus import (  # noqa: F401 (models, prometheus: fixtures)
    NODE,  # the executor's node: start_stable's pods ask for it
    models,
    phase,
    prometheus,
    start_stable,
)
from tests.serving.server_process import post

pytestmark = pytest.mark.slow


class Raters:
    """Until stopped: a completion from each Ready pod of the namespace, then its rating posted to a random pod."""

    def __init__(self, executor: ExecutorProcess, ns: str, stable_version: str) -> None:
        self.executor, self.ns, self.stable = executor, ns, stable_version
        self.stop = threading.Event()
        self.posted: dict[int, int] = {}  # rating -> feedback accepted
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rng = random.Random(13)

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            urls = [f"http://{ep}" for ep, labels in self.executor.targets() if labels.get("namespace") == self.ns]
            for url in urls:
                try:
                    self._rate_one(url, urls)
                except OSError:  # a pod going away (the rolled-back canary) resets its connections
                    continue
            time.sleep(0.1)

    def _rate_one(self, url: str, urls: list[str]) -> None:
        status, body = post(f"{url}/v1/completions", completion_body(max_tokens=1), timeout=20)
        if status != 200:
            return
        rid = str(body["id"])
        rating = 5 if rid.startswith(f"kt-{self.stable}-") else 1
        status, _ = post(f"{self.rng.choice(urls)}/v1/feedback", {"id": rid, "rating": rating}, timeout=20)
        if status == 202:
            self.posted[rating] = self.posted.get(rating, 0) + 1

    def __enter__(self) -> Raters:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_canary_rated_worse_by_its_users_is_rolled_back(k8s, operator, executor, prometheus, models):  # noqa: F811
    start_stable(k8s, executor, models, prometheus, "rated")
    stable = k8s.get_md("rated")["status"]["stableVersion"]
    analysis = {"maxUserRatingDrop": 1.0, "minFeedback": 3, "latencyP99Ratio": 10.0}  # ratings decide, not latency
    with Raters(executor, k8s.ns, stable) as raters:
        k8s.patch_md(
            "rated", {"adapter": {"uri": str(models["v2"])}, "canary": {"interval": "30s", "analysis": analysis}}
        )
        try:
            status = wait_for(phase(k8s, "rated", "RolledBack", "Promoted"), 240, "a decision")
        finally:
            print(f"posted ratings: {raters.posted}; status: {k8s.get_md('rated').get('status')}")
    assert status["phase"] == "RolledBack" and status["stableVersion"] == stable
    assert "analysis failed at 50%" in status["message"] and "userRatingDrop: user rating drop" in status["message"]
    failed = [a for a in status["analysis"] if a["verdict"] == "Fail"]
    assert failed and failed[0]["check"] == "userRatingDrop" and failed[0]["threshold"] == "<= 1"
    assert failed[0]["value"] == pytest.approx(4.0, abs=0.01)  # every canary answer rated 1, every stable one 5
    assert "canary mean rating 1 of " in failed[0]["message"] and "stable 5 of " in failed[0]["message"]
    assert k8s.deployment("rated-canary").spec.replicas == 0
