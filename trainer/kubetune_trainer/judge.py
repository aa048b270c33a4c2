"""spec.evaluation.judge: an LLM judge compares the tuned model's answers with the baseline's, pairwise.

Room: the trainer's evaluation (HTTP to the judge only; no torch). Each held-out prompt is judged twice, the
tuned answer first and then second, so a judge that prefers a position cannot pass for one that prefers an
answer: verdicts that disagree across the two orders count as ties. The judge is any OpenAI-compatible chat
endpoint (POST <url>/v1/chat/completions); the prompt format is `judge_prompt`'s, the reply's first word
A, B or tie. Requests are bounded (timeout, retries with exponential backoff); a judge still unreachable
after them raises `JudgeUnavailable`, which the recipe turns into evalPassed false, never a silent pass.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("kubetune_trainer")

WIN, TIE, LOSS = "win", "tie", "loss"
RETRYABLE = (408, 429, 500, 502, 503, 504)


class JudgeUnavailable(RuntimeError):
    """The judge could not be asked (unreachable, refused, or it answered something else than a verdict)."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # base URL; requests go to <url>/v1/chat/completions
    rubric: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a log line
    timeout: float = 30
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry; doubled for each next one

    @property
    def completions_url(self) -> str:
        return self.url.rstrip("/") + "/v1/chat/completions"


def judge_prompt(question: str, reference: str | None, first: str, second: str) -> str:
    """The user message the judge reads (kubetune_dev.judge parses exactly these headings).

    >>> print(judge_prompt("2+2?", "4", "4", "five"))
    [Question]
    2+2?
    [Reference]
    4
    [Answer A]
    4
    [Answer B]
    five
    [Verdict]
    Reply with A, B or tie.
    """
    parts = [("Question", question), ("Reference", reference or "(none)"), ("Answer A", first), ("Answer B", second)]
    body = "".join(f"[{h}]\n{text.strip()}\n" for h, text in parts)
    return body + "[Verdict]\nReply with A, B or tie."


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from the judge's reply (its first word), None when it is none of them.

    >>> parse_verdict(" B. Answer B is right"), parse_verdict("Tie"), parse_verdict("maybe")
    ('B', 'tie', None)
    """
    m = re.match(r"\W*(\w+)", text)
    word = m.group(1).casefold() if m else ""
    return {"a": "A", "b": "B", "tie": "tie"}.get(word)


def outcome(tuned_first: str | None, tuned_second: str | None) -> tuple[str, bool]:
    """(the tuned model's outcome, whether the two orders agreed), from the verdicts with the tuned answer as A
    and then as B. Disagreeing verdicts (and unreadable ones) are a tie.

    >>> outcome("A", "B"), outcome("B", "A"), outcome("A", "A"), outcome("tie", "tie")
    (('win', True), ('loss', True), ('tie', False), ('tie', True))
    """
    as_a = {"A": WIN, "B": LOSS, "tie": TIE}.get(tuned_first or "")
    as_b = {"B": WIN, "A": LOSS, "tie": TIE}.get(tuned_second or "")
    if as_a is None or as_b is None or as_a != as_b:
        return TIE, False
    return as_a, True


def summarize(outcomes: list[tuple[str, bool]], tuned: list[str], baseline: list[str]) -> dict[str, Any]:
    """status.judge: win/tie/loss, winRate = (wins + ties/2) / judged, the position-consistency rate, and the
    mean answer lengths (a judge that likes long answers shows as a win rate that follows them).

    >>> summarize([("win", True), ("tie", False), ("loss", True), ("win", True)], ["abcd"] * 4, ["ab"] * 4)
    ... # doctest: +NORMALIZE_WHITESPACE
    {'judged': 4, 'wins': 2, 'ties': 1, 'losses': 1, 'winRate': 0.625, 'positionConsistency': 0.75,
     'meanAnswerCharsTuned': 4.0, 'meanAnswerCharsBaseline': 2.0}
    """
    n = len(outcomes)
    wins = sum(o == WIN for o, _ in outcomes)
    ties = sum(o == TIE for o, _ in outcomes)
    return {
        "judged": n,
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
        "winRate": round((wins + ties / 2) / n, 6) if n else 0.0,
        "positionConsistency": round(sum(c for _, c in outcomes) / n, 6) if n else 0.0,
        "meanAnswerCharsTuned": round(sum(map(len, tuned)) / max(len(tuned), 1), 2),
        "meanAnswerCharsBaseline": round(sum(map(len, baseline)) / max(len(baseline), 1), 2),
    }


def ask(endpoint: Endpoint, prompt: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """One verdict: POST the chat request, retrying timeouts, connection errors and 408/429/5xx with
    exponential backoff; `JudgeUnavailable` (naming the url) once the retries are spent or on any other
    refusal (401, 404: retrying cannot help)."""
    body: dict[str, Any] = {
        "messages": [{"role": "system", "content": endpoint.rubric}, {"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    }
    if endpoint.model:
        body["model"] = endpoint.model
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(endpoint.retries + 1):
        if attempt:
            sleep(endpoint.backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(endpoint.completions_url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout) as response:
                reply = json.loads(response.read())
            return str(reply["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code} {err.reason}"
            if err.code not in RETRYABLE:
                raise JudgeUnavailable(f"judge {endpoint.completions_url} refused the request: {last}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            last = str(getattr(err, "reason", err))
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise JudgeUnavailable(f"judge {endpoint.completions_url} answered no chat completion: {err}") from err
        log.warning("judge %s: attempt %d failed (%s)", endpoint.completions_url, attempt + 1, last)
    tries = endpoint.retries + 1
    raise JudgeUnavailable(f"judge {endpoint.completions_url} unreachable after {tries} attempts: {last}")


def compare(
    endpoint: Endpoint, items: list[tuple[str, str | None, str, str]], sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """``items``: (prompt, reference, tuned answer, baseline answer); each judged in both orders."""
    outcomes = []
    for prompt, reference, tuned, baseline in items:
        first = parse_verdict(ask(endpoint, judge_prompt(prompt, reference, tuned, baseline), sleep))
        second = parse_verdict(ask(endpoint, judge_prompt(prompt, reference, baseline, tuned), sleep))
        outcomes.append(outcome(first, second))
    return summarize(outcomes, [t for *_, t, _ in items], [b for *_, b in items])


def run(
    endpoint: Endpoint, items: list[tuple[str, str | None, str, str]], sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """`compare`, or {"error": ...} when the judge is unavailable or there is nothing to judge."""
    if not items:
        return {"judged": 0, "error": "no held-out prompts with answers to judge (a text dataset has none)"}
    try:
        result = compare(endpoint, items, sleep)
    except JudgeUnavailable as err:
        log.error("%s", err)
        return {"judged": 0, "error": str(err)}
    log.info("judge: %s", result)
    return result
