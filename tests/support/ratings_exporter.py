"""A stand-in for the serving pods' feedback metrics, for the canary rating check's Prometheus test.

Room: test support; touches nothing but its own socket. A real HTTP process that takes feedback as the
servers do (issue 13's contract: ``POST /v1/feedback {"id": "kt-<version>-<32 hex>", "rating": 1..5}``
-> 202, counted under the version in the id, not the process's own) and exports what they export at
/metrics: ``kubetune_feedback_rating_sum`` / ``_count{version}``, a prometheus-client Summary created
at 0 for its own version at start-up (so ``increase()`` counts the first rating after a scrape).

It stands in for the builtin server only where the test is about the operator's queries and verdicts,
not the server (tests/serving/test_prometheus_ratings.py rates real servers too): what it counts is
what the test posted, nothing else.

    python tests/support/ratings_exporter.py --version canary    # logs "listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Summary, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

RESPONSE_ID = re.compile(r"^kt-(.+)-[0-9a-f]{32}$")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    registry = CollectorRegistry()
    ratings = Summary(
        "kubetune_feedback_rating", "Ratings (1..5) received, by rated version.", ["version"], registry=registry
    )
    ratings.labels(args.version)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                return self._answer(404, {"error": "not found"})
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            if self.path != "/v1/feedback":
                return self._answer(404, {"error": "not found"})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            match = RESPONSE_ID.match(str(body.get("id", "")))
            rating = body.get("rating")
            if match is None:
                return self._answer(400, {"error": "id: not a kt-<version>-<32 hex> response id"})
            if not isinstance(rating, int) or not 1 <= rating <= 5:
                return self._answer(400, {"error": "rating: an integer 1..5"})
            ratings.labels(match.group(1)).observe(rating)
            self._answer(202, {"accepted": True})

        def _answer(self, status: int, doc: dict[str, object]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:  # one line per scrape would drown the log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.exit(0)


if __name__ == "__main__":
    main()
