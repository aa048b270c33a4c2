"""Redaction of capture records: pure functions, run on the capture thread before a record is written.

Room: the builtin server's capture (no I/O). Configured JSON keys are masked wherever they appear in a
record; configured patterns and the builtin secret patterns are masked in the free text a user or the
model wrote (prompt, messages' content, response, correction), never in ids or numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "[REDACTED]"
# Secrets that must never reach a capture file whatever the spec says: a leaked key in a prompt is
# the common case ("here is my key, why does this fail?").
BUILTIN_PATTERNS = (
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",  # Authorization header values pasted into a prompt
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI-style API keys (sk-..., sk-proj-...)
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key ids
    r"(?i)\baws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+=]{40}",  # and their secrets, when named
)
TEXT_FIELDS = ("prompt", "response", "correction")


class Redactor:
    """Masks ``fields`` (JSON keys) anywhere and ``patterns`` (regexes, plus the builtin ones) in text.

    >>> r = Redactor(["email"], [r"\\d{3}-\\d{4}"])
    >>> r.record({"prompt": "call 555-1234, key sk-abcdefghijklmnopqrstu", "meta": {"email": "a@b.c"}})
    {'prompt': 'call [REDACTED], key [REDACTED]', 'meta': {'email': '[REDACTED]'}}
    """

    def __init__(self, fields: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        self.fields = frozenset(fields)
        self.patterns = [re.compile(p) for p in (*BUILTIN_PATTERNS, *patterns)]

    def text(self, value: str) -> str:
        for p in self.patterns:
            value = p.sub(MASK, value)
        return value

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._keys(record)
        for name in TEXT_FIELDS:
            if isinstance(out.get(name), str):
                out[name] = self.text(out[name])
        if isinstance(out.get("messages"), list):
            out["messages"] = [
                {**m, "content": self.text(m["content"])}
                if isinstance(m, dict) and isinstance(m.get("content"), str)
                else m
                for m in out["messages"]
            ]
        return out

    def _keys(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: MASK if k in self.fields else self._keys(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._keys(v) for v in value]
        return value
