"""The capture proxy (vLLM's capture) as a real process in front of a real builtin server standing in for vLLM."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_dev.loadgen import run_load
from kubetune_server.capture_proxy import parse
from kubetune_trainer.captured import read_captures
from tests.serving.server_process import ServerProcess, get, metric_value, post

VERSION = "vproxy"


def proxy_process(upstream: str, root: Path, *args: str) -> ServerProcess:
    proc = ServerProcess(Path("unused"), version=VERSION)
    proc.argv = [sys.executable, "-m", "kubetune_server.capture_proxy", "--upstream", upstream, "--port", "0"]
    proc.argv += ["--upstream-health", "/readyz", "--version", VERSION, "--capture-uri", str(root), *args]
    return proc


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_model_dir, version="engine") as server:
        yield server


def test_the_proxy_captures_and_takes_feedback_in_front_of_an_engine(engine, tmp_path):
    root = tmp_path / "captures"
    with proxy_process(engine.url, root, "--capture-sample-rate", "1") as proxy:
        result = run_load({proxy.url: 1}, max_requests=12, max_duration=60, concurrency=2)
        assert result.by_target()[proxy.url].statuses == {200: 12}
        status, chat = proxy.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and chat["object"] == "chat.completion" and chat["id"].startswith(f"kt-{VERSION}-")
        assert proxy.post("/v1/feedback", {"id": chat["id"], "rating": 2})[0] == 202
        status, err = proxy.post("/v1/feedback", {"id": chat["id"], "rating": 0})
        assert status == 400 and err["error"]["param"] == "rating"
        # Everything else is relayed as the engine answers it: its models, its errors, a refused stream.
        assert proxy.get("/v1/models") == engine.get("/v1/models")
        status, err = proxy.post("/v1/completions", {"prompt": "x", "stream": True})
        assert status == 400 and err["error"]["param"] == "stream"
        assert proxy.post("/v1/completions", {"prompt": ""})[0] == 400
        text = proxy.metrics()
        # One scrape: the engine's series (the analysis' queries) and the proxy's feedback series.
        assert metric_value(text, "kubetune_requests_total", version="engine", status="200") >= 13
        assert metric_value(text, "kubetune_feedback_total", version=VERSION, kind="down") == 1
        assert metric_value(text, "kubetune_feedback_rating_count", version=VERSION) == 1
    requests, feedback, _ = read_captures(str(root), None)
    assert len(requests) == 13 and [f["rating"] for f in feedback] == [2]
    chat_record = next(r for r in requests if r["endpoint"] == "chat")
    assert chat_record["id"] == chat["id"] and chat_record["messages"] == [{"role": "user", "content": "hi"}]
    assert chat_record["response"] == chat["choices"][0]["message"]["content"] and chat_record["version"] == VERSION
    completion = next(r for r in requests if r["endpoint"] == "completions")
    assert completion["prompt"] == "A pod is" and completion["completionTokens"] >= 1


def test_the_proxy_is_unready_while_its_engine_is_down(tmp_path):
    proxy = proxy_process("http://127.0.0.1:9", tmp_path).start()  # nothing listens on port 9
    try:
        url = proxy.wait_listening()
        assert get(url + "/readyz")[0] == 503 and get(url + "/healthz")[0] == 200
        status, err = post(url + "/v1/completions", {"prompt": "x"})
        assert status == 502 and "engine unreachable" in err["error"]["message"]
    finally:
        proxy.stop()


def test_proxy_flags_come_from_the_server_environment():
    s = parse(["--upstream", "http://127.0.0.1:8001"], env={"KUBETUNE_SERVER_CAPTURE_SAMPLE_RATE": "0.25"})
    assert s.capture_sample_rate == 0.25 and s.capture_uri is None
