"""A deterministic LLM judge for tests and the demo: an OpenAI-compatible chat endpoint that compares two answers.

Room: development stand-ins (no operator or trainer imports). It reads the prompt format the trainer's judge
client writes (kubetune_trainer.judge.judge_prompt: [Question] / [Reference] / [Answer A] / [Answer B]) and
decides by a rule a test can predict: the answer holding more of the target words wins (the --keyword words,
else the reference answer's words), equal counts are a tie. Options make it misbehave on purpose:

    python -m kubetune_dev.judge --port 0                  # prints "judge listening on http://127.0.0.1:<port>"
        --keyword WORDS        the words that win (default: the [Reference] section's words)
        --position-bias first  always answer "A" (what position swapping must expose)
        --fail-first N         503 for the first N completions (what retries must survive)
        --api-key K            401 unless "Authorization: Bearer K"

GET /stats answers {"requests", "completions", "failed", "unauthorized", "verdicts": {"A", "B", "tie"}}.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECTION = re.compile(r"^\[(Question|Reference|Answer A|Answer B)\]\n(.*?)(?=^\[[A-Za-z ]+\]\n|\Z)", re.S | re.M)
WORD = re.compile(r"[a-z0-9]+")


def sections(text: str) -> dict[str, str]:
    """The prompt's parts by heading.

    >>> sections("[Question]\\nq?\\n[Answer A]\\nyes\\n[Answer B]\\nno\\n")
    {'Question': 'q?', 'Answer A': 'yes', 'Answer B': 'no'}
    """
    return {m.group(1): m.group(2).strip() for m in SECTION.finditer(text)}


def words(text: str) -> set[str]:
    return set(WORD.findall(text.casefold()))


def verdict(parts: dict[str, str], keyword: str | None) -> str:
    """ "A", "B" or "tie": more target words wins.

    >>> verdict({"Reference": "blue sky", "Answer A": "the sky", "Answer B": "a blue sky"}, None)
    'B'
    >>> verdict({"Answer A": "x", "Answer B": "y"}, "z")
    'tie'
    """
    target = words(keyword if keyword is not None else parts.get("Reference", ""))
    a = len(target & words(parts.get("Answer A", "")))
    b = len(target & words(parts.get("Answer B", "")))
    return "A" if a > b else "B" if b > a else "tie"


class Judge:
    def __init__(self, keyword: str | None, position_bias: str | None, fail_first: int, api_key: str | None) -> None:
        self.keyword, self.position_bias, self.api_key = keyword, position_bias, api_key
        self.fail_left = fail_first
        self.lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "requests": 0,
            "completions": 0,
            "failed": 0,
            "unauthorized": 0,
            "verdicts": {"A": 0, "B": 0, "tie": 0},
        }

    def complete(self, body: dict[str, Any], auth: str | None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.stats["requests"] += 1
            if self.api_key is not None and auth != f"Bearer {self.api_key}":
                self.stats["unauthorized"] += 1
                return 401, {"error": {"message": "missing or wrong API key", "type": "invalid_request_error"}}
            if self.fail_left > 0:
                self.fail_left -= 1
                self.stats["failed"] += 1
                return 503, {"error": {"message": "judge overloaded (--fail-first)", "type": "server_error"}}
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, {"error": {"message": "messages: expected a non-empty list", "type": "invalid_request_error"}}
        user = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user")
        answer = "A" if self.position_bias == "first" else verdict(sections(user), self.keyword)
        with self.lock:
            self.stats["completions"] += 1
            self.stats["verdicts"][answer] += 1
        return 200, {
            "id": f"judge-{self.stats['completions']}",
            "object": "chat.completion",
            "model": body.get("model") or "kubetune-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(user.split()),
                "completion_tokens": 1,
                "total_tokens": len(user.split()) + 1,
            },
        }


def handler(judge: Judge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/stats":
                with judge.lock:
                    self._send(200, json.loads(json.dumps(judge.stats)))
            elif self.path in ("/healthz", "/readyz", "/health"):
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError:
                self._send(400, {"error": {"message": "body: not JSON"}})
                return
            self._send(*judge.complete(body if isinstance(body, dict) else {}, self.headers.get("Authorization")))

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would drown a test's log

    return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kubetune_dev.judge", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--keyword", default=None, help="the words that win (default: the reference answer's)")
    p.add_argument("--position-bias", choices=["first"], default=None, help="always prefer the first answer")
    p.add_argument("--fail-first", type=int, default=0, metavar="N", help="answer 503 to the first N completions")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    args = p.parse_args(argv)
    judge = Judge(args.keyword, args.position_bias, args.fail_first, args.api_key)
    server = ThreadingHTTPServer((args.host, args.port), handler(judge))
    print(f"judge listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
