"""What capture costs a request: latency with capture on (sampleRate 1.0) vs off, same tiny model, same run.

Starts two real builtin servers on the tiny model (tests' kubetune_trainer.tiny_model), one capturing
every response to a local folder and one not, and sends them the same completion requests in
alternating rounds from the bounded load generator (so drift of the machine hits both alike). Prints
the P50 and P99 of each side and the ratios on/off, then checks that every request of the capturing
side was written.

    python bench/bench_capture.py                       # 5 rounds of 40 requests per side
    python bench/bench_capture.py --rounds 2 --requests 10

Numbers are for humans (bench/RESULTS.md); nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from kubetune_dev.loadgen import TargetStats, completion_body, run_load
from kubetune_trainer.captured import read_captures
from kubetune_trainer.tiny_model import ensure_tiny_model

# The servers are started the way the serving tests start them (run as a script, the repo is not on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serving.server_process import ServerProcess


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=40, help="per side per round")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-capture-"))
    model = ensure_tiny_model(work / "tiny-model")
    captures = work / "captures"
    off = ServerProcess(model, version="off")
    on = ServerProcess(model, "--capture-uri", str(captures), "--capture-sample-rate", "1", version="on")
    stats = {"off": TargetStats(), "on": TargetStats()}
    body = completion_body("A pod is", args.max_tokens)
    try:
        for server in (off.start(), on.start()):
            server.wait_ready(timeout=600)  # both load at once; a busy machine loads slowly
        for server in (off, on):  # warm-up, not measured
            run_load({server.url: 1}, max_requests=5, max_duration=60, concurrency=1, body=body)
        for _ in range(args.rounds):
            for side, server in (("off", off), ("on", on)):
                result = run_load(
                    {server.url: 1}, max_requests=args.requests, max_duration=600, body=body, concurrency=1
                )
                got = result.by_target()[server.url]
                stats[side].statuses.update(got.statuses)
                stats[side].latencies.extend(got.latencies)
    finally:
        off.stop()
        on.stop()  # SIGTERM: the open capture file is published
    written = len(read_captures(str(captures), None)[0])
    print(f"{'side':<6}{'requests':>10}{'P50 ms':>10}{'P99 ms':>10}")
    for side, s in stats.items():
        print(f"{side:<6}{s.count:>10}{s.quantile(0.5) * 1000:>10.2f}{s.quantile(0.99) * 1000:>10.2f}")
    p50 = stats["on"].quantile(0.5) / stats["off"].quantile(0.5)
    p99 = stats["on"].quantile(0.99) / stats["off"].quantile(0.99)
    print(f"P50 ratio on/off: {p50:.3f}x")
    print(f"P99 ratio on/off: {p99:.3f}x")
    expected = stats["on"].statuses[200] + 5  # the warm-up requests were captured too
    print(f"captured {written} of {expected} requests")
    print(json.dumps({"p50_ratio": round(p50, 4), "p99_ratio": round(p99, 4), "captured": written}))
    failed = any(code != 200 for s in stats.values() for code in s.statuses)
    return 1 if failed or written != expected else 0


if __name__ == "__main__":
    sys.exit(main())
