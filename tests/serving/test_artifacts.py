"""Every kind of artifact the trainer writes, served by the builtin runtime as a real process.

A full fine-tune (or merged weights) is a whole model: served with no adapter, under the name the
adapter had. A hub-id base model is read from a pre-populated Hugging Face cache with the hub
switched off (HF_HUB_OFFLINE=1), as a pod reads it from its cache claim. s3:// folders are fetched by
the init step (``python -m kubetune_server.fetch``) from a real S3-compatible server and checked
against the digest the trainer recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_trainer.export import directory_digest
from tests.serving.server_process import ServerProcess
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow
PROMPTS = ("A pod is", "The node", "kubectl")


@pytest.fixture(scope="module")
def full_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the trainer's `method: full` exports: every weight changed, with tokenizer and model card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("full") / "artifact"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    (out / "model_card.json").write_text(json.dumps({"method": "full"}))
    return out


def greedy(model_dir: Path, prompt: str, tokens: int = 4) -> str:
    """The reference: plain transformers greedy decoding of the same folder, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def complete(s: ServerProcess, prompt: str, **extra: object) -> tuple[int, dict]:
    return s.post("/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0, **extra})


@pytest.fixture(scope="module")
def full_server(full_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(full_model_dir, "--model-name", "support", version="full") as s:
        yield s


def test_full_fine_tune_is_served_as_the_model_with_no_adapter(full_server, full_model_dir, tiny_model_dir):
    assert [m["id"] for m in full_server.get("/v1/models")[1]["data"]] == ["support"]
    assert "loaded " in full_server.log_tail() and "+ adapter" not in full_server.log_tail()
    answers = []
    for prompt in PROMPTS:
        status, body = complete(full_server, prompt)
        assert status == 200, body
        assert body["model"] == "support" and body["usage"]["completion_tokens"] >= 1
        answers.append(body["choices"][0]["text"])
    # The tuned weights answer, not the base model's.
    assert answers == [greedy(full_model_dir, p) for p in PROMPTS]
    assert answers != [greedy(tiny_model_dir, p) for p in PROMPTS]


def test_asking_for_a_base_model_it_does_not_serve_is_a_404(full_server):
    status, body = complete(full_server, "A pod is", model="tiny-model")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def hub_cache(home: Path, repo_id: str, model_dir: Path, revision: str = "main") -> Path:
    """A Hugging Face cache (HF_HOME) holding `model_dir` as `repo_id`, laid out as the hub client writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    return home


def test_hub_id_is_served_from_a_pre_populated_cache_offline(tiny_model_dir, lora_adapter_dir, tmp_path, monkeypatch):
    home = hub_cache(tmp_path / "hf", "kubetune/tiny-model", tiny_model_dir, revision="v1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a lookup that misses the cache fails instead of downloading
    with ServerProcess(
        Path("kubetune/tiny-model"), "--revision", "v1", version="hub", adapter=lora_adapter_dir
    ) as s:  # fmt: skip
        assert [m["id"] for m in s.get("/v1/models")[1]["data"]] == ["lora", "tiny-model"]
        status, body = complete(s, "A pod is")
        assert status == 200 and body["choices"][0]["text"], body
        status, base = complete(s, "A pod is", model="tiny-model")
        assert status == 200 and base["choices"][0]["text"] == greedy(tiny_model_dir, "A pod is")
    # Not in the cache, hub off: the server says so and exits instead of hanging unready.
    missing = ServerProcess(Path("kubetune/not-cached"), version="miss").start()
    try:
        assert missing.proc is not None and missing.proc.wait(timeout=120) == 1
        log = missing.log.read_text(errors="replace")
        assert "cannot load the model" in log and "kubetune/not-cached" in log
    finally:
        missing.stop()


def fetch(dest: Path, uri: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kubetune_server.fetch", uri, str(dest), *args]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_fetch_downloads_an_s3_folder_and_checks_its_digest(lora_adapter_dir, tmp_path):
    digest = directory_digest(lora_adapter_dir)
    with S3Server() as s3:
        fs = s3.client()
        fs.mkdir("artifacts")
        fs.put(str(lora_adapter_dir), "artifacts/run-1/artifact", recursive=True)
        uri = "s3://artifacts/run-1/artifact"

        done = fetch(tmp_path / "models" / "adapter", uri, s3.env, "--digest", digest)
        assert done.returncode == 0, done.stderr
        assert directory_digest(tmp_path / "models" / "adapter") == digest
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["adapter"]  # no partial copy left

        wrong = fetch(tmp_path / "other" / "adapter", uri, s3.env, "--digest", "sha256:" + "0" * 64)
        assert wrong.returncode == 1 and "differs from the recorded" in wrong.stderr
        assert not (tmp_path / "other" / "adapter").exists()  # never served, and a retry downloads again

        gone = fetch(tmp_path / "gone", "s3://artifacts/run-9/artifact", s3.env)
        assert gone.returncode == 1 and "no such object" in gone.stderr
