"""The OpenAI request and response shapes: pure functions, no model, no HTTP.

Requests are validated field by field into a ``GenerationRequest``; anything wrong raises
``RequestError`` carrying the HTTP status and an OpenAI-style error body. Unknown fields are ignored,
as OpenAI clients send many optional ones (``user``, ``logprobs``...).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

RESPONSE_ID = re.compile(r"kt-([A-Za-z0-9._-]{1,128})-([0-9a-f]{32})")
ROLES = ("system", "user", "assistant", "tool", "developer")


class RequestError(Exception):
    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope.

    >>> error_body("bad", "invalid_request_error", "prompt")["error"]["param"]
    'prompt'
    """
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | None = None  # /v1/completions
    messages: list[dict[str, str]] | None = None  # /v1/chat/completions
    model: str | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"'{name}' must be a number between {low} and {high}, got {value!r}", param=name)
    return float(value)


def _common(body: dict[str, Any], default_max_tokens: int, cap: int) -> dict[str, Any]:
    if body.get("stream"):
        raise RequestError("streaming is not supported by the builtin runtime; send 'stream': false", param="stream")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(s for s in stop if s)
    else:
        raise RequestError("'stop' must be a string or a list of up to 4 strings", param="stop")
    return {
        "model": model,
        "max_tokens": min(max_tokens, cap),  # clamped, not rejected: the cap protects the server, not the API
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        "stop": stops,
    }


def completion_request(body: dict[str, Any], cap: int) -> GenerationRequest:
    """Validate a /v1/completions body.

    >>> completion_request({"prompt": "hi", "max_tokens": 999, "temperature": 0}, cap=8).max_tokens
    8
    >>> completion_request({"prompt": ""}, cap=8)
    Traceback (most recent call last):
    ...
    kubetune_server.protocol.RequestError: 'prompt' must be a non-empty string (or a list of one)
    """
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("'prompt' must be a non-empty string (or a list of one)", param="prompt")
    return GenerationRequest(prompt=prompt, **_common(body, 16, cap))


def _content(value: Any) -> str | None:
    """A message's content: a string, or a list of text parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        texts = [p.get("text") for p in value]
        if all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
    return None


def chat_request(body: dict[str, Any], cap: int) -> GenerationRequest:
    """Validate a /v1/chat/completions body.

    >>> chat_request({"messages": [{"role": "user", "content": "hi"}]}, cap=8).messages
    [{'role': 'user', 'content': 'hi'}]
    """
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        content = _content(m.get("content")) if isinstance(m, dict) else None
        if role not in ROLES or content is None:
            raise RequestError(
                f"messages[{i}] must be an object with 'role' (one of {', '.join(ROLES)}) and string 'content'",
                param=f"messages[{i}]",
            )
        messages.append({"role": role, "content": content})
    return GenerationRequest(messages=messages, **_common(body, cap, cap))


def apply_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop sequence; True when one was found.

    >>> apply_stop("a.b.c", (".",))
    ('a', True)
    """
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, response_id: str
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_response(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, response_id: str
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def models_response(names: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "kubetune"} for n in names],
    }


def new_id(version: str) -> str:
    """A response id, ``kt-<version>-<32 hex>``: feedback names it, and the version is read back from it."""
    return f"kt-{version}-{uuid.uuid4().hex}"


def version_of(response_id: str) -> str | None:
    """The version a response id names (it may hold dashes), or None when it is not one of ours.

    >>> version_of("kt-v2-1-" + "a" * 32), version_of("cmpl-1")
    ('v2-1', None)
    """
    m = RESPONSE_ID.fullmatch(response_id)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Feedback:
    response_id: str
    version: str
    rating: int | None
    correction: str | None


MAX_CORRECTION_CHARS = 65536


def feedback_request(body: dict[str, Any]) -> Feedback:
    """Validate a POST /v1/feedback body: an id, and a rating (1..5) and/or a correction.

    >>> feedback_request({"id": "kt-v1-" + "0" * 32, "rating": 5}).version
    'v1'
    >>> feedback_request({"id": "kt-v1-" + "0" * 32, "rating": 7})
    Traceback (most recent call last):
    ...
    kubetune_server.protocol.RequestError: 'rating' must be an integer from 1 to 5, got 7
    """
    rid = body.get("id")
    version = version_of(rid) if isinstance(rid, str) else None
    if version is None:
        raise RequestError(f"'id' must be a response id (kt-<version>-<32 hex>), got {rid!r}", param="id")
    rating = body.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
        raise RequestError(f"'rating' must be an integer from 1 to 5, got {rating!r}", param="rating")
    correction = body.get("correction")
    if correction is not None and (not isinstance(correction, str) or not correction.strip()):
        raise RequestError("'correction' must be a non-empty string", param="correction")
    if isinstance(correction, str) and len(correction) > MAX_CORRECTION_CHARS:
        raise RequestError(f"'correction' is over {MAX_CORRECTION_CHARS} characters", param="correction")
    if rating is None and correction is None:
        raise RequestError("feedback needs a 'rating' (1..5) or a 'correction', or both", param="rating")
    return Feedback(str(rid), version, rating, correction)
