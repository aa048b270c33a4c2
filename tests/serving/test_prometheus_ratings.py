"""The canary's user-rating check (userRatingDrop) against a real Prometheus scraping real processes.

Two processes per scenario play the stable and the canary pod. In the "drop" scenario they are real
builtin servers (the tiny model) and each rating is for a response id one of them really answered. The
other scenarios' pods are stand-ins that take feedback and export the same counters
(tests/support/ratings_exporter.py): there the test is about the operator's queries, verdicts and
decisions, and six model servers would not fit two shared cores. Half of each version's feedback
(two ratings in four) is posted to the other version's process, as a Service spreads it: the check
must count it under the version it rates.

Counts are what increase() makes of them, not what was posted: it extrapolates a series' growth to the
end of the window (by up to a scrape interval), and a series that first appears with ratings in it (a
version's first feedback reaching the other pod) adds nothing until it grows. Means hold whatever
part is counted (ratings go to each pod in pairs with the scenario's mean), and the test scrapes SETTLE
seconds after the last rating so the extrapolation stays small (under 25 %) against minFeedback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_dev.loadgen import completion_body
from kubetune_dev.processes import stop_process
from kubetune_dev.prometheus import PrometheusServer, prometheus_binary_or_skip
from kubetune_operator import analysis, canary
from kubetune_operator.reconcile.md_analysis import judge_check
from kubetune_operator.serving_spec import Analysis, Canary
from tests.serving.server_process import ServerProcess, post

pytestmark = pytest.mark.slow

EXPORTER = Path(__file__).resolve().parents[1] / "support" / "ratings_exporter.py"
LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")
SETTLE = 5  # seconds of scrapes after Prometheus saw every rating
WINDOW = "3m"  # covers the whole test: every rating posted after the first scrape counts
REAL = "drop"  # this scenario's pods are real builtin servers
TRACKS = ("stable", "canary")
# scenario -> (stable's ratings, canary's ratings)
RATINGS = {
    "drop": ([4, 5] * 12, [2] * 24),  # 4.5 vs 2.0
    "equal": ([4, 5] * 12, [5, 4] * 12),  # 4.5 vs 4.5
    "few": ([4, 5] * 10, [2] * 5),  # the canary is rated worse, by only 5 users (minFeedback 10)
}


class Exporter:
    def __init__(self, version: str) -> None:
        self.version = version
        self.log = Path(tempfile.mkstemp(prefix=f"kubetune-ratings-{version}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            argv = [sys.executable, str(EXPORTER), "--version", version]
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = ""

    def wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not (m := LISTENING.search(self.log.read_text(errors="replace"))):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, f"{self.version}: not listening after {timeout}s"
            time.sleep(0.05)
        self.url = m.group(1)
        return self.url


def version(scenario: str, track: str) -> str:
    return f"{scenario}-{track}"


@pytest.fixture(scope="module")
def prom(tiny_model_dir: Path) -> Iterator[PrometheusServer]:
    binary = prometheus_binary_or_skip()
    with contextlib.ExitStack() as stack:
        servers = {version(REAL, t): ServerProcess(tiny_model_dir, version=version(REAL, t)) for t in TRACKS}
        for server in servers.values():
            server.start()
            stack.callback(server.stop)
        stand_ins = {version(s, t): Exporter(version(s, t)) for s in RATINGS if s != REAL for t in TRACKS}
        for pod in stand_ins.values():
            stack.callback(stop_process, pod.proc)
            pod.wait_listening()
        p = stack.enter_context(PrometheusServer(binary))
        for server in servers.values():
            server.wait_ready(timeout=300)
        urls = {v: pod.url for v, pod in {**servers, **stand_ins}.items()}
        p.set_targets([(url.removeprefix("http://"), {}) for url in urls.values()])
        p.wait_for_targets(len(urls))  # each scraped once: its series at 0, so increase() sees every rating
        ids = itertools.count()
        for scenario, (stable, canary_) in RATINGS.items():
            for track, ratings in zip(TRACKS, (stable, canary_), strict=True):
                other = "canary" if track == "stable" else "stable"
                for i, rating in enumerate(ratings):
                    rid = response_id(servers.get(version(scenario, track)), version(scenario, track), next(ids))
                    url = urls[version(scenario, other if i % 4 >= 2 else track)]
                    assert post(f"{url}/v1/feedback", {"id": rid, "rating": rating}) == (202, {"accepted": True})
        posted = {
            version(s, t): float(len(r))
            for s, rs in RATINGS.items()
            for t, r in zip(("stable", "canary"), rs, strict=True)
        }
        query = "sum by (version) (kubetune_feedback_rating_count)"
        deadline = time.monotonic() + 20
        while p.query_by(query, "version") != posted:
            assert time.monotonic() < deadline, f"Prometheus never counted {posted}: {p.query_by(query, 'version')}"
            time.sleep(0.25)
        time.sleep(SETTLE)
        yield p


def response_id(server: ServerProcess | None, version: str, n: int) -> str:
    """The id of a response the version's real server just answered; a made-up one for a stand-in."""
    if server is None:
        return f"kt-{version}-{n:032x}"
    status, body = server.post("/v1/completions", completion_body(max_tokens=1))
    assert status == 200 and body["id"].startswith(f"kt-{version}-"), body
    return str(body["id"])


def rating_verdict(prom: PrometheusServer, scenario: str, runtime: str = "builtin", policy: str = "pause"):  # type: ignore[no-untyped-def]
    a = Analysis(enabled=True, prometheus=prom.url, max_user_rating_drop=1.0, min_feedback=10, no_data_policy=policy)
    sel = analysis.selectors_for(runtime, "ml", "chat", version(scenario, "canary"), version(scenario, "stable"))
    [check] = [c for c in analysis.build_checks(a, runtime, sel, WINDOW, 0, 0.9) if c.name == "userRatingDrop"]
    return canary.apply_policy(judge_check(check, prom.url, 10), check.policy)


def decide(verdict) -> canary.Decision:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    rollout = canary.Rollout(stable_version="s", canary_version="c", step=0, step_start=now)
    return canary.decide(rollout, Canary(steps=(100,)), [verdict], now)


@pytest.mark.parametrize("runtime", ["builtin", "vllm"])
def test_canary_rated_much_worse_is_rolled_back_naming_the_ratings(prom, runtime):
    v = rating_verdict(prom, "drop", runtime)
    print(v.message)
    assert v.verdict == "Fail" and v.value == pytest.approx(2.5, abs=0.1) and v.threshold == "<= 1"
    counts = re.search(r"canary mean rating 2 of (\d+) ratings, stable 4.\d+ of (\d+)\)$", v.message)
    assert counts is not None and all(12 <= int(n) <= 30 for n in counts.groups()), v.message  # 12 on its own pod
    d = decide(v)
    assert d.kind == "rollback" and re.search(
        r"userRatingDrop: user rating drop 2\.\d+ > max 1 \(canary mean rating 2 ", d.reason
    )


def test_equally_rated_canary_passes_and_is_promoted(prom):
    v = rating_verdict(prom, "equal")
    assert v.verdict == "Pass" and v.value == pytest.approx(0, abs=0.1), v.message
    assert decide(v).kind == "promote"


def test_fewer_ratings_than_min_feedback_is_no_data_under_the_policy(prom):
    v = rating_verdict(prom, "few")
    assert v.verdict == "NoData" and v.value is None, v.message
    assert re.fullmatch(r"too few user ratings in the window \(canary [2-6]; minFeedback 10\)", v.message)
    d = decide(v)
    assert d.kind == "hold" and "too few user ratings" in d.reason
    failed = rating_verdict(prom, "few", policy="fail")
    assert failed.verdict == "Fail" and decide(failed).kind == "rollback"
