"""The builtin runtime as a real process: tiny model + LoRA adapter on CPU, loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.server_process import ServerProcess, metric_value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, lora_adapter_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_model_dir, version="v1", adapter=lora_adapter_dir) as s:
        yield s


def completion(s: ServerProcess, **extra: object) -> tuple[int, dict]:
    return s.post("/v1/completions", {"prompt": "A pod is", "max_tokens": 4, "temperature": 0, **extra})


def test_ready_only_after_the_model_loaded(server: ServerProcess) -> None:
    # The fixture polled /readyz from the moment the port was open: 503 while loading, then 200.
    assert server.readyz_seen[0] == 503
    assert server.readyz_seen[-1] == 200
    assert server.get("/healthz") == (200, {"status": "ok"})
    status, models = server.get("/v1/models")
    assert status == 200
    assert [m["id"] for m in models["data"]] == ["lora", "tiny-model"]


def test_completion_returns_text_and_usage(server: ServerProcess) -> None:
    status, body = completion(server)
    assert status == 200, body
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and body["model"] == "lora"
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Greedy decoding is deterministic.
    assert completion(server)[1]["choices"][0]["text"] == choice["text"]


def test_adapter_changes_the_output(server: ServerProcess) -> None:
    adapted = [completion(server, prompt=p)[1]["choices"][0]["text"] for p in ("A pod is", "The node", "kubectl")]
    base = [
        completion(server, prompt=p, model="tiny-model")[1]["choices"][0]["text"]
        for p in ("A pod is", "The node", "kubectl")
    ]
    assert adapted != base


def test_sampling_and_stop_sequences(server: ServerProcess) -> None:
    status, body = completion(server, temperature=0.9, top_p=0.9, max_tokens=6)
    assert status == 200 and 1 <= body["usage"]["completion_tokens"] <= 6
    greedy = completion(server, max_tokens=6)[1]["choices"][0]["text"]
    if len(greedy) > 1:  # stop at the greedy text's second character: the text is cut before it
        cut = completion(server, max_tokens=6, stop=[greedy[1]])[1]["choices"][0]
        assert cut["text"] == greedy[: greedy.index(greedy[1])]
        assert cut["finish_reason"] == "stop"


def test_chat_completion(server: ServerProcess) -> None:
    status, body = server.post(
        "/v1/chat/completions",
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a pod?"}],
            "max_tokens": 3,
            "temperature": 0,
        },
    )
    assert status == 200, body
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert body["usage"]["prompt_tokens"] > 5 and 1 <= body["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", {"max_tokens": 4}, 400, "'prompt' must be a non-empty string"),
        ("/v1/completions", {"prompt": "x", "temperature": 9}, 400, "'temperature'"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0]"),
        ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "'gpt-4' does not exist"),
        ("/v1/embeddings", {"input": "x"}, 404, "no route"),
    ],
)
def test_bad_requests_get_openai_errors(
    server: ServerProcess, path: str, body: object, status: int, fragment: str
) -> None:
    got, err = server.post(path, body)
    assert got == status
    assert fragment in err["error"]["message"]
    assert err["error"]["type"] == "invalid_request_error"
    assert server.get("/healthz")[0] == 200  # and the server is still up


def test_metrics_move_with_requests(server: ServerProcess) -> None:
    before = server.metrics()
    assert completion(server)[0] == 200
    assert server.post("/v1/completions", b"{")[0] == 400
    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        return (metric_value(after, name, version="v1", **labels) or 0) - (
            metric_value(before, name, version="v1", **labels) or 0
        )

    assert delta("kubetune_requests_total", status="200") == 1
    assert delta("kubetune_requests_total", status="400") == 1
    assert delta("kubetune_request_duration_seconds_count") == 2
    assert delta("kubetune_request_duration_seconds_bucket", le="+Inf") == 2
    assert delta("kubetune_time_to_first_token_seconds_count") == 1
    assert delta("kubetune_prompt_tokens_total") > 0
    assert 1 <= delta("kubetune_generation_tokens_total") <= 4
    assert metric_value(after, "kubetune_requests_in_flight", version="v1") == 0
    assert (metric_value(after, "process_resident_memory_bytes") or 0) > 50e6
    assert "kubetune_gpu_memory_used_bytes" not in after  # CPU: absent, not 0


def test_injected_latency_is_observed(tiny_model_dir: Path) -> None:
    with ServerProcess(tiny_model_dir, "--inject-latency-ms", "300", version="slow") as s:
        assert completion(s)[0] == 200
        text = s.metrics()
    total = metric_value(text, "kubetune_request_duration_seconds_sum", version="slow")
    assert total is not None and total >= 0.3
    assert metric_value(text, "kubetune_request_duration_seconds_bucket", version="slow", le="0.2869") == 0
    ttft = metric_value(text, "kubetune_time_to_first_token_seconds_sum", version="slow")
    assert ttft is not None and ttft >= 0.3  # the delay comes before the first token


def test_injected_errors_are_500s_counted_by_status(tiny_model_dir: Path) -> None:
    with ServerProcess(tiny_model_dir, "--inject-error-rate", "1.0", version="broken") as s:
        results = [completion(s) for _ in range(3)]
        text = s.metrics()
    assert [status for status, _ in results] == [500, 500, 500]
    assert results[0][1]["error"]["type"] == "server_error"
    assert metric_value(text, "kubetune_requests_total", version="broken", status="500") == 3
    assert metric_value(text, "kubetune_requests_total", version="broken", status="200") == 0
    assert metric_value(text, "kubetune_generation_tokens_total", version="broken") == 0


@pytest.mark.gpu
def test_gpu_memory_gauges_on_cuda(tiny_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU memory gauges are only registered for a model on CUDA")
    with ServerProcess(tiny_model_dir, "--device", "cuda", version="gpu") as s:
        assert completion(s)[0] == 200
        text = s.metrics()
    used = metric_value(text, "kubetune_gpu_memory_used_bytes", version="gpu")
    total = metric_value(text, "kubetune_gpu_memory_total_bytes", version="gpu")
    assert used is not None and total is not None and 0 < used <= total


def test_sigterm_exits_cleanly(tiny_model_dir: Path) -> None:
    s = ServerProcess(tiny_model_dir, version="term").start()
    try:
        s.wait_listening()
    finally:
        assert s.stop() == 0
