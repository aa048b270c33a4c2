"""spec.evaluation.judge against the real judge program (kubetune_dev.judge) over real HTTP, and the checks."""

from __future__ import annotations

import json

import pytest

from kubetune_api.evaluation import Check
from kubetune_dev.processes import free_port
from kubetune_trainer import judge, scoring
from tests.support.judge_process import JudgeProcess

# (prompt, reference, tuned answer, baseline answer): the tuned answers hold the reference's words.
ITEMS: list[tuple[str, str | None, str, str]] = [
    ("what is orbweaver?", "the scheduler", "the scheduler", "a banana"),
    ("what is silkline?", "a job queue", "a job queue", "queue"),
    ("what is dewdrop?", "a cache entry", "nothing", "a cache entry"),
    ("what is mothwing?", "the router", "blue", "green"),
]


def endpoint(url: str, **kw: object) -> judge.Endpoint:
    return judge.Endpoint(url, "compare", backoff=0.05, timeout=5, **kw)  # type: ignore[arg-type]


def test_both_orders_decide_and_disagreement_is_a_tie() -> None:
    assert judge.outcome("A", "B") == ("win", True)  # tuned first: A; tuned second: B -> a win both times
    assert judge.outcome("B", "A") == ("loss", True)
    assert judge.outcome("A", "A") == ("tie", False)  # the judge prefers the first position, not an answer
    assert judge.outcome("B", "B") == ("tie", False)
    assert judge.outcome("tie", "tie") == ("tie", True)
    assert judge.outcome("A", None) == ("tie", False)  # an unreadable verdict decides nothing
    s = judge.summarize([("win", True), ("win", True), ("tie", False), ("loss", True)], ["abc"] * 4, ["a"] * 4)
    assert (s["wins"], s["ties"], s["losses"], s["judged"]) == (2, 1, 1, 4)
    assert s["winRate"] == pytest.approx((2 + 0.5) / 4)
    assert s["positionConsistency"] == pytest.approx(0.75)
    assert (s["meanAnswerCharsTuned"], s["meanAnswerCharsBaseline"]) == (3.0, 1.0)


def test_a_fair_judge_over_http_counts_wins_ties_and_losses() -> None:
    with JudgeProcess() as j:
        result = judge.compare(endpoint(j.url), ITEMS)
        stats = j.stats()
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert result["winRate"] == pytest.approx(0.625)
    assert result["positionConsistency"] == 1.0
    assert stats["completions"] == 2 * len(ITEMS)  # every prompt in both orders


def test_a_position_biased_judge_gives_only_ties_and_no_consistency() -> None:
    with JudgeProcess("--position-bias", "first") as j:
        result = judge.compare(endpoint(j.url), ITEMS)
    assert (result["wins"], result["ties"], result["losses"]) == (0, 4, 0)
    assert result["winRate"] == 0.5
    assert result["positionConsistency"] == 0.0


def test_retries_with_backoff_survive_a_judge_that_fails_first() -> None:
    waits: list[float] = []
    with JudgeProcess("--fail-first", "2") as j:
        result = judge.compare(endpoint(j.url, retries=3), ITEMS[:1], sleep=waits.append)
        stats = j.stats()
    assert result["wins"] == 1
    assert stats["failed"] == 2 and stats["requests"] == 4
    assert waits == [0.05, 0.1]  # exponential


def test_too_few_retries_is_judge_unavailable() -> None:
    with JudgeProcess("--fail-first", "5") as j:
        result = judge.run(endpoint(j.url, retries=1), ITEMS[:1], sleep=lambda _: None)
    assert result["judged"] == 0
    assert j.url in result["error"] and "503" in result["error"]


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    with JudgeProcess("--api-key", "s3cret") as j:
        refused = judge.run(endpoint(j.url), ITEMS[:1], sleep=lambda _: None)
        accepted = judge.run(endpoint(j.url, api_key="s3cret"), ITEMS[:1])
        stats = j.stats()
    assert "401" in refused["error"] and stats["unauthorized"] == 1  # not retried: a key does not appear
    assert accepted["wins"] == 1


def test_an_unreachable_judge_is_judge_unavailable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = judge.run(endpoint(url, retries=2), ITEMS[:1], sleep=lambda _: None)
    assert result["judged"] == 0 and "unreachable after 3 attempts" in result["error"]
    assert f"{url}/v1/chat/completions" in result["error"]


def test_check_rates_on_a_tiny_golden_set() -> None:
    checks = [
        Check(name="json", type="jsonValid", min=0.5),
        Check(name="ticket", type="regex", pattern=r"T-\d+"),
        Check(name="exact", type="exactMatch"),
        Check(name="ref", type="contains"),
        Check(name="polite", type="contains", pattern="please"),
    ]
    predictions = ['{"ticket": "T-1"}', "Please see T-22.", "The scheduler", "[1, 2"]
    references = ['{"ticket": "T-1"}', "see t-22", "the scheduler.", "[1, 2]"]
    rates = scoring.check_rates(checks, predictions, references)
    assert rates == {
        "check.json": 0.25,
        "check.ticket": 0.5,
        "check.exact": 0.5,
        "check.ref": 0.75,
        "check.polite": 0.25,
    }
    from kubetune_trainer.config import GatesConfig

    passed, reasons = scoring.apply_gates(rates, GatesConfig(), checks)
    assert not passed and reasons == ["check.json 0.25 < checks[json].min 0.5"]
    assert json.dumps(rates)  # plain floats, as status.metrics takes them
