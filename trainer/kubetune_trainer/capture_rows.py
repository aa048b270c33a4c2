"""spec.dataset.captures: captured requests and feedback in, training rows out. Pure: no files.

Room: the trainer's data functions (rows in, rows out). Records are the serving side's capture format
(request: id, time, version, endpoint, prompt or messages, response; feedback: responseId, time,
version, rating 1..5 or null, correction or null). They were redacted when they were written: nothing
is removed here.

Per format (``fields`` names the columns, as for any dataset):

- instruction: a correction -> (prompt, correction); else a response rated >= minRating -> (prompt,
  response). A chat request cannot be one prompt string: dropped as otherEndpoint (use format chat).
- chat: the same answers, as the request's messages plus an assistant turn (a completions prompt is one
  user turn).
- preference: a correction -> (prompt, chosen=correction, rejected=the original response); and for one
  prompt, every response rated >= minRating against every one rated <= 2 (at most MAX_PAIRS per prompt).

>>> req = {"kind": "request", "id": "kt-v1-a", "time": "2026-01-01T00:00:00Z", "version": "v1",
...        "endpoint": "completions", "prompt": "2+2?", "response": "5"}
>>> fb = {"kind": "feedback", "responseId": "kt-v1-a", "time": "2026-01-01T00:01:00Z", "version": "v1",
...       "rating": 1, "correction": "4"}
>>> built = build_rows([req], [fb], "instruction", FieldsConfig(), Window(min_rating=4))
>>> built.rows
[('v1', {'prompt': '2+2?', 'response': '4'})]
>>> build_rows([req], [fb], "preference", FieldsConfig(), Window(min_rating=4)).rows
[('v1', {'prompt': '2+2?', 'chosen': '4', 'rejected': '5'})]
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.config import FieldsConfig

Record = dict[str, Any]
Row = dict[str, Any]
DOWN = 2  # the contract's "down" rating: <= 2 (3 is neutral)
MAX_PAIRS = 8  # up-vs-down pairs per prompt: a popular prompt must not fill the data set with itself


@dataclass(frozen=True)
class Window:
    """Which records count: captured in [start - since, start], of these versions (None: all)."""

    min_rating: int = 4
    start: dt.datetime | None = None  # the run's start; None: no bound (a local run without the operator)
    since_seconds: float | None = None
    versions: tuple[str, ...] | None = None


@dataclass
class SourceCounts:
    """status.data.sources[]: one serving version's records, the rows they gave, and why others gave none."""

    version: str
    uri: str | None = None
    requests: int = 0
    feedback: int = 0
    rows: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "requests": self.requests, "feedback": self.feedback}
        out.update(rows=self.rows, **({"uri": self.uri} if self.uri else {}))
        if any(self.dropped.values()):
            out["dropped"] = {k: v for k, v in sorted(self.dropped.items()) if v}
        return out


@dataclass
class Built:
    rows: list[tuple[str, Row]]  # (the version whose response gave the row, the row)
    sources: dict[str, SourceCounts]

    def source(self, version: str) -> SourceCounts:
        return self.sources.setdefault(version, SourceCounts(version))


def parse_time(text: Any) -> dt.datetime | None:
    """RFC 3339 UTC -> aware datetime; None for anything else.

    >>> parse_time("2026-01-02T03:04:05Z").isoformat(), parse_time("yesterday")
    ('2026-01-02T03:04:05+00:00', None)
    """
    if not isinstance(text, str):
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def normalise(text: str) -> str:
    """Case, whitespace and punctuation folded: prompts that differ only in those are one prompt.

    >>> normalise("  What is  LoRA? ")
    'what is lora'
    """
    return re.sub(r"\W+", " ", text.casefold()).strip()


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """The normalised prompt: a completions prompt, or a chat's messages (roles kept) before the answer.

    >>> prompt_key("Hi!"), prompt_key([{"role": "user", "content": "Hi!"}])
    ('hi', 'user: hi')
    """
    if isinstance(prompt, str):
        return normalise(prompt)
    return "\n".join(f"{m.get('role')}: {normalise(str(m.get('content', '')))}" for m in prompt)


def _prompt(req: Record) -> str | list[dict[str, Any]] | None:
    if req.get("endpoint") == "chat":
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            return None
        return [{"role": m.get("role"), "content": m["content"]} for m in messages]
    return req["prompt"] if isinstance(req.get("prompt"), str) else None


@dataclass(frozen=True)
class _Answer:
    """One captured response with its feedback folded in (the latest rating and correction win)."""

    version: str
    prompt: str | list[dict[str, Any]]
    response: str
    rating: int | None
    correction: str | None
    id: str


def _in_window(time: dt.datetime | None, w: Window) -> str | None:
    """Why a record is outside the window (None: inside)."""
    if time is None:
        return "malformed"
    if w.start is not None and time > w.start:
        return "afterRunStart"
    if w.start is not None and w.since_seconds is not None and time < w.start - dt.timedelta(seconds=w.since_seconds):
        return "beforeSince"
    return None


def join(requests: list[Record], feedback: list[Record], w: Window, built: Built) -> list[_Answer]:
    """The requests in the window, each with the feedback given for it before the run started."""
    answers: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()  # every request id read, in the window or not: its feedback is not unmatched
    for req in requests:
        rid, version = req.get("id"), str(req.get("version") or "")
        if isinstance(rid, str):
            seen.add(rid)
        if w.versions is not None and version not in w.versions:
            continue  # another version's folder held it: not asked for
        src = built.source(version)
        prompt = _prompt(req)
        why = _in_window(parse_time(req.get("time")), w)
        if why is None and (not isinstance(rid, str) or prompt is None or not isinstance(req.get("response"), str)):
            why = "malformed"
        if why is None and rid in answers:
            continue  # the same record twice (a re-uploaded file): one request
        if why is not None:
            src.dropped[why] += 1
            continue
        src.requests += 1
        answers[str(rid)] = {"version": version, "prompt": prompt, "response": req["response"], "id": rid}
    folded: dict[str, dict[str, Any]] = defaultdict(dict)
    for fb in sorted(feedback, key=lambda f: str(f.get("time") or "")):
        rid = fb.get("responseId")
        version = str(fb.get("version") or "")
        if w.versions is not None and version not in w.versions:
            continue
        if rid not in answers:
            if rid not in seen:
                built.source(version).dropped["unmatchedFeedback"] += 1
            continue
        target = answers[str(rid)]
        src = built.source(target["version"])
        rating, correction = fb.get("rating"), fb.get("correction")
        valid_rating = rating is None or (isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5)
        if not valid_rating or not (correction is None or isinstance(correction, str)):
            src.dropped["malformed"] += 1
            continue
        if w.start is not None and (parse_time(fb.get("time")) or w.start) > w.start:
            continue  # given after the run started: the next run reads it
        src.feedback += 1
        if rating is not None:
            folded[str(rid)]["rating"] = rating
        if correction is not None and correction.strip():
            folded[str(rid)]["correction"] = correction
    return [
        _Answer(a["version"], a["prompt"], a["response"], folded[rid].get("rating"), folded[rid].get("correction"), rid)
        for rid, a in answers.items()
    ]


def build_rows(requests: list[Record], feedback: list[Record], fmt: str, fields: FieldsConfig, w: Window) -> Built:
    """Rows in `fmt` (instruction, chat or preference) from the records, and per version what was dropped."""
    built = Built([], {})
    answers = join(requests, feedback, w, built)
    if fmt == "preference":
        _preference_rows(answers, fields, w, built)
        return built
    for a in answers:
        src = built.source(a.version)
        if fmt == "instruction" and not isinstance(a.prompt, str):
            src.dropped["otherEndpoint"] += 1
            continue
        if a.correction is not None:
            answer = a.correction
        elif a.rating is not None and a.rating >= w.min_rating:
            answer = a.response
        else:
            src.dropped["noFeedback" if a.rating is None else "belowMinRating"] += 1
            continue
        built.rows.append((a.version, _row(a.prompt, answer, fmt, fields)))
        src.rows += 1
    return built


def _row(prompt: str | list[dict[str, Any]], answer: str, fmt: str, fields: FieldsConfig) -> Row:
    if fmt == "instruction":
        return {fields.prompt: prompt, fields.response: answer}
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return {fields.messages: [*turns, {"role": "assistant", "content": answer}]}


def _pair(prompt: str | list[dict[str, Any]], chosen: str, rejected: str, fields: FieldsConfig) -> Row:
    if isinstance(prompt, str):
        return {fields.prompt: prompt, fields.chosen: chosen, fields.rejected: rejected}
    # trl's conversational pairs: the prompt's turns, then one assistant turn on each side.
    return {
        fields.prompt: list(prompt),
        fields.chosen: [{"role": "assistant", "content": chosen}],
        fields.rejected: [{"role": "assistant", "content": rejected}],
    }


def _preference_rows(answers: list[_Answer], fields: FieldsConfig, w: Window, built: Built) -> None:
    used: set[str] = set()
    for a in answers:
        if a.correction is not None and normalise(a.correction) != normalise(a.response):
            built.rows.append((a.version, _pair(a.prompt, a.correction, a.response, fields)))
            built.source(a.version).rows += 1
            used.add(a.id)
    by_prompt: dict[str, list[_Answer]] = defaultdict(list)
    for a in answers:
        if a.rating is not None:
            by_prompt[prompt_key(a.prompt)].append(a)
    for group in by_prompt.values():
        ups = sorted((a for a in group if a.rating is not None and a.rating >= w.min_rating), key=lambda a: a.id)
        downs = sorted((a for a in group if a.rating is not None and a.rating <= DOWN), key=lambda a: a.id)
        pairs = [(u, d) for u, d in itertools.product(ups, downs) if normalise(u.response) != normalise(d.response)]
        for up, down in pairs[:MAX_PAIRS]:
            built.rows.append((up.version, _pair(up.prompt, up.response, down.response, fields)))
            built.source(up.version).rows += 1
            used.update((up.id, down.id))
    for a in answers:
        if a.id not in used:
            no_feedback = a.rating is None and a.correction is None
            built.source(a.version).dropped["noFeedback" if no_feedback else "unpaired"] += 1
