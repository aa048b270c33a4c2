"""Fast tests of the serving runtime's pure parts: request validation, settings, metrics exposition."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubetune_dev.loadgen import check_loopback
from kubetune_server import protocol
from kubetune_server.app import ErrorInjector
from kubetune_server.metrics import ServerMetrics
from kubetune_server.protocol import RequestError
from kubetune_server.settings import SettingsError, parse
from tests.serving.server_process import metric_value

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({}, "prompt", "'prompt' must be a non-empty string"),
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": 3}, "prompt", "non-empty"),
        ({"prompt": ["a", "b"]}, "prompt", "list of one"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "positive integer"),
        ({"prompt": "x", "max_tokens": "4"}, "max_tokens", "positive integer"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens", "positive integer"),
        ({"prompt": "x", "temperature": -1}, "temperature", "between 0.0 and 2.0"),
        ({"prompt": "x", "temperature": "hot"}, "temperature", "between"),
        ({"prompt": "x", "top_p": 1.5}, "top_p", "between 0.0 and 1.0"),
        ({"prompt": "x", "stream": True}, "stream", "streaming is not supported"),
        ({"prompt": "x", "n": 2}, "n", "only n=1"),
        ({"prompt": "x", "stop": 5}, "stop", "'stop' must be"),
        ({"prompt": "x", "model": 1}, "model", "'model' must be a string"),
    ],
)
def test_completion_request_errors(body: dict, param: str, fragment: str) -> None:
    with pytest.raises(RequestError) as e:
        protocol.completion_request(body, cap=8)
    assert e.value.status == 400
    assert e.value.param == param
    assert fragment in e.value.message
    assert e.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "'messages' must be a non-empty list"),
        ({"messages": []}, "non-empty list"),
        ({"messages": "hi"}, "non-empty list"),
        ({"messages": [{"content": "hi"}]}, "messages[0] must be an object with 'role'"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
        ({"messages": [*USER, {"role": "user"}]}, "messages[1]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]"),
        ({"messages": ["hi"]}, "messages[0]"),
    ],
)
def test_chat_request_errors(body: dict, fragment: str) -> None:
    with pytest.raises(RequestError, match=r"messages") as e:
        protocol.chat_request(body, cap=8)
    assert fragment in e.value.message


def test_requests_parse_with_defaults_and_clamping() -> None:
    req = protocol.completion_request({"prompt": ["hello"], "stop": ["\n", ""], "temperature": 0}, cap=8)
    assert (req.prompt, req.max_tokens, req.temperature, req.stop) == ("hello", 8, 0.0, ("\n",))
    assert protocol.completion_request({"prompt": "x", "max_tokens": 100}, cap=8).max_tokens == 8
    chat = protocol.chat_request(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        cap=8,
    )
    assert chat.messages == [{"role": "user", "content": "ab"}]
    assert chat.max_tokens == 8  # chat defaults to the server's cap, completions to OpenAI's 16 (clamped)


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b"\xff\xfe", b""])
def test_parse_json_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(RequestError, match="JSON"):
        protocol.parse_json(raw)


def test_responses_have_openai_shape() -> None:
    rid = protocol.new_id("canary")
    assert protocol.version_of(rid) == "canary" and len(rid) == len("kt-canary-") + 32
    c = protocol.completion_response("m", "text", "length", 3, 4, rid)
    assert c["id"] == rid and c["object"] == "text_completion" and c["choices"][0]["text"] == "text"
    assert c["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    chat = protocol.chat_response("m", "hey", "stop", 1, 1, rid)
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hey"}


def test_settings_flags_win_over_environment() -> None:
    env = {
        "KUBETUNE_SERVER_MODEL": "/m",
        "KUBETUNE_SERVER_VERSION": "canary",
        "KUBETUNE_SERVER_INJECT_LATENCY_MS": "300",
    }
    s = parse(["--version", "stable"], env=env)
    assert (s.model, s.version, s.inject_latency_ms) == ("/m", "stable", 300.0)
    assert parse([], env={**env, "KUBETUNE_SERVER_ADAPTER": ""}).adapter is None
    assert parse([], env=env).served_model_name == "m"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "--model (or KUBETUNE_SERVER_MODEL) is required"),
        (["--model", "/m", "--inject-error-rate", "1.5"], "between 0 and 1"),
        (["--model", "/m", "--inject-latency-ms", "-1"], ">= 0"),
        (["--model", "/m", "--max-new-tokens", "0"], ">= 1"),
        (["--model", "/m", "--device", "tpu"], "auto, cpu or cuda"),
        (["--model", "/m", "--adapter", "/a", "--adapter-name", "m"], "must differ"),
        (["--model", "/m", "--version", ""], "must not be empty"),
    ],
)
def test_settings_errors(argv: list[str], fragment: str) -> None:
    with pytest.raises(SettingsError) as e:
        parse(argv, env={})
    assert fragment in str(e.value)


def test_cli_bad_settings_exit_2_in_one_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune_server", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"error: --model {tmp_path / 'missing'}: not a directory (nor a hub id such as org/name)"
    )


def test_metrics_are_labelled_and_start_at_zero() -> None:
    m = ServerMetrics("canary")
    text = m.exposition().decode()
    # Known statuses exist from the start (rate 0, not absent); the histogram has its buckets.
    assert metric_value(text, "kubetune_requests_total", version="canary", status="500") == 0.0
    assert metric_value(text, "kubetune_request_duration_seconds_bucket", version="canary", le="0.005") == 0.0
    assert metric_value(text, "kubetune_request_duration_seconds_bucket", version="canary", le="61.45") == 0.0
    assert metric_value(text, "kubetune_requests_in_flight", version="canary") == 0.0
    # No GPU gauges unless a CUDA model registered them: no GPU is not "0 bytes of GPU".
    assert "kubetune_gpu_memory" not in text
    m.observe_request(200, 0.4)
    m.observe_generation(prompt_tokens=5, generated_tokens=3, ttft_seconds=0.1)
    text = m.exposition().decode()
    assert metric_value(text, "kubetune_request_duration_seconds_bucket", version="canary", le="0.3844") == 0.0
    assert metric_value(text, "kubetune_request_duration_seconds_bucket", version="canary", le="0.4037") == 1.0
    assert metric_value(text, "kubetune_prompt_tokens_total", version="canary") == 5.0
    assert metric_value(text, "kubetune_generation_tokens_total", version="canary") == 3.0
    assert metric_value(text, "kubetune_time_to_first_token_seconds_count", version="canary") == 1.0


def test_gpu_gauges_read_at_scrape_time() -> None:
    m = ServerMetrics("v")
    used = iter([1.0, 2.0])
    m.add_gpu_memory(lambda: next(used), lambda: 8.0)
    assert metric_value(m.exposition().decode(), "kubetune_gpu_memory_used_bytes", version="v") == 1.0
    text = m.exposition().decode()
    assert metric_value(text, "kubetune_gpu_memory_used_bytes", version="v") == 2.0
    assert metric_value(text, "kubetune_gpu_memory_total_bytes", version="v") == 8.0


@pytest.mark.parametrize(("rate", "failures"), [(0.0, 0), (0.2, 20), (0.25, 25), (1 / 3, 33), (0.999, 99), (1.0, 100)])
def test_error_injection_fails_exactly_the_rate(rate: float, failures: int) -> None:
    injector = ErrorInjector(rate)
    assert sum(injector.should_fail() for _ in range(100)) == failures


@pytest.mark.parametrize("url", ["http://10.0.0.1:80", "http://example.com", "http://0.0.0.0:8000"])
def test_loadgen_refuses_non_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_loopback(url)


@pytest.mark.parametrize(
    "module",
    [
        "kubetune_server.app",
        "kubetune_server.protocol",
        "kubetune_server.settings",
        "kubetune_dev.loadgen",
        "kubetune_dev.prometheus",
        "tests.serving.server_process",
    ],
)
def test_doctests(module: str) -> None:
    # `make test` collects doctests of the operator only; the serving examples are checked here.
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0
    assert result.attempted > 0
