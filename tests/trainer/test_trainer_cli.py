"""The CLI contract with the operator: exit codes, one-line errors, artifact, model card, result.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubetune_trainer.cli import main
from kubetune_trainer.config import parse_job
from kubetune_trainer.environment import TrainerEnv
from kubetune_trainer.export import directory_digest
from kubetune_trainer.recipe import output_location, run

REPO = Path(__file__).resolve().parents[2]


def read_json(path: Path):
    return json.loads(path.read_text())


def env_with_pythonpath() -> dict[str, str]:
    env = dict(os.environ, KUBETUNE_METRICS_PORT="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer"), env.get("PYTHONPATH", "")])
    return env


def test_bad_config_exits_2_with_one_line(write_spec, tmp_path, capsys):
    spec = write_spec({"lora": {"alpha": 8}})
    assert main(["train", str(spec), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: spec.lora: lora.alpha requires lora.r (alpha scales r; when both are absent r=16, alpha=2r)"]
    assert read_json(tmp_path / "out" / "result.json")["phase"] == "Failed"


def test_missing_base_model_directory_is_a_one_line_error(write_spec, tmp_path, capsys):
    spec = write_spec({"baseModel": {"uri": str(tmp_path / "nowhere")}})
    assert main(["train", str(spec), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: spec.baseModel.uri:") and "not a directory" in err[0]


def test_qlora_on_cpu_fails_fast_with_a_clear_message(write_spec, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the gpu-marked test covers qlora")
    assert main(["train", "--spec", str(write_spec({"method": "qlora", "quantization": {}}))]) == 2
    assert "spec.method: qlora needs a CUDA GPU" in capsys.readouterr().err


def test_bad_data_fails_before_any_model_is_loaded(tmp_path):
    """A real subprocess: bad row -> exit 2, one line naming row and field; the model path is never read."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "kind: FineTuneJob\nmetadata: {name: j}\n"
        f"spec: {{baseModel: {{uri: {tmp_path}/no-such-model}}, dataset: {{uri: {data}}},"
        f" output: {{uri: {tmp_path}/o}}}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "train", "--spec", str(spec), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env_with_pythonpath(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {data} row 2: field 'response' is missing (format instruction; the row has 'prompt'): "
        "name the right column in spec.dataset.fields"
    )


def test_output_location_precedence(monkeypatch, tmp_path):
    spec = {"baseModel": {"name": "m"}, "dataset": {"uri": "/d"}, "output": {"uri": "/out"}}
    cfg = parse_job({"metadata": {"name": "j"}, "spec": spec})
    local = TrainerEnv()
    assert output_location(cfg, None, local) == (Path("/out"), None)
    cfg.output.uri = "pvc://artifacts/j"
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path))
    assert output_location(cfg, None, local) == (tmp_path / "artifacts" / "j", None)
    operator = TrainerEnv.from_environ({"KUBETUNE_OUTPUT_DIR": "/resolved"})
    assert output_location(cfg, None, operator)[0] == Path("/resolved")
    assert output_location(cfg, "/override", operator)[0] == Path("/override")
    local, remote = output_location(cfg, "s3://bucket/runs/j", operator)
    assert remote == "s3://bucket/runs/j" and "runs" in str(local)


@pytest.mark.slow
def test_artifact_model_card_and_result(write_spec, tmp_path):
    spec = write_spec({"output": {"mergeWeights": True}, "evaluation": {"gates": {"maxPerplexity": 1e9}}})
    out = tmp_path / "out"
    outcome = run(str(spec), str(out))

    result = read_json(out / "result.json")
    assert result == json.loads(json.dumps(outcome))
    assert result["phase"] == "Succeeded" and result["evalPassed"] is True
    assert set(result["metrics"]) == {"evalLoss", "perplexity", "exactMatch"}
    artifact = out / "artifact"
    merged_dir = out / "merged"
    assert result["artifact"] == {
        "uri": str(artifact),
        "digest": directory_digest(artifact),
        "kind": "adapter",
        "mergedUri": str(merged_dir),
        "mergedDigest": directory_digest(merged_dir),
    }
    names = {p.name for p in artifact.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "model_card.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)

    card = read_json(artifact / "model_card.json")
    assert Path(card["baseModel"]["uri"]).name == "tiny-model"
    assert card["dataset"]["sha256"].startswith("sha256:") and card["dataset"]["splitSeed"] == 42
    assert card["dataset"]["cleaning"]["duplicates"] == 3
    assert card["method"] == "lora" and card["hyperparameters"]["lora"]["r"] == 16
    assert card["hyperparameters"]["training"]["maxSteps"] == 4
    assert set(card["metrics"]) == {"base", "tuned"}
    assert {"torch", "transformers", "peft"} <= set(card["libraries"])

    ev = read_json(out / "eval.json")
    assert ev["evalPassed"] is True and ev["gates"]["maxPerplexity"] == 1e9
    assert ev["tuned"] == result["metrics"] and ev["base"] == result["baseMetrics"]
    assert {"prompt", "expected", "predicted"} <= set(ev["samples"][0])

    split = read_json(out / "data" / "split.json")
    assert split["counts"] == {"train": 204, "validation": 26, "test": 26}
    test_rows = (out / "data" / "test.jsonl").read_text().splitlines()
    assert len(test_rows) == 26

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.config.num_hidden_layers == 2


@pytest.mark.slow
def test_failing_gate_is_recorded_not_crashed(write_spec, tmp_path):
    spec = write_spec({"method": "full", "evaluation": {"gates": {"maxPerplexity": 1.0}}})
    outcome = run(str(spec), str(tmp_path / "out"))
    assert outcome["phase"] == "Succeeded" and outcome["evalPassed"] is False
    assert outcome["gateFailures"][0].startswith("perplexity")
    assert (tmp_path / "out" / "artifact" / "model.safetensors").exists()
    assert outcome["artifact"]["kind"] == "model" and "mergedUri" not in outcome["artifact"]


@pytest.mark.slow
def test_chat_format_end_to_end(write_spec, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer with the glossary definition."},
                {"role": "user", "content": f"What is term {i}?"},
                {"role": "assistant", "content": f"definition {i % 5}"},
            ]
        }
        for i in range(40)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = write_spec({"dataset": {"uri": str(data), "format": "chat"}, "evaluation": {"metrics": ["contains"]}})
    outcome = run(str(spec), str(tmp_path / "out"))
    assert outcome["phase"] == "Succeeded" and set(outcome["metrics"]) == {"evalLoss", "contains"}


@pytest.mark.slow
def test_text_format_with_general_domain_mix(write_spec, tmp_path):
    domain = tmp_path / "domain.txt"
    domain.write_text("\n\n".join(f"The orbweaver schedules job number {i} on a silkline." for i in range(30)))
    spec = write_spec(
        {
            "dataset": {
                "uri": str(domain),
                "format": "text",
                "mix": {"uri": str(REPO / "examples" / "data" / "general.txt"), "fraction": 0.2},
            },
            "evaluation": {"metrics": ["perplexity"]},
        }
    )
    outcome = run(str(spec), str(tmp_path / "out"))
    split = read_json(tmp_path / "out" / "data" / "split.json")
    assert split["counts"]["train"] == 24 + 6  # 24 domain rows + 6 general rows = 20 % mix
    assert outcome["phase"] == "Succeeded" and "perplexity" in outcome["metrics"]


def test_failure_reaches_the_termination_message(write_spec, tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates the file; we only write into an existing one
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    assert main(["train", str(write_spec({"method": "qlora", "quantization": {}}))]) == 2
    message = json.loads(log.read_text())
    assert message["phase"] == "Failed" and "qlora" in message["message"]


@pytest.mark.slow
def test_success_reaches_the_termination_message_with_a_pvc_artifact_uri(write_spec, tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path / "pvc"))
    # What the operator sets: the resolved per-run directory on the mounted claim.
    monkeypatch.setenv("KUBETUNE_OUTPUT_DIR", str(tmp_path / "pvc" / "artifacts" / "job" / "run-3"))
    assert main(["train", "--spec", str(write_spec({"training": {"maxSteps": 2}}))]) == 0
    message = json.loads(log.read_text())
    # BASE_SPEC has no gates: nothing checked the model, so it is not a pass (EvalPassed Unknown, NoGates).
    assert message["phase"] == "Succeeded" and message["evalPassed"] is None
    data = message["data"]  # the cleaning counts the operator puts into status.data
    assert data["duplicatesDropped"] == 3 and data["train"] == 204
    assert data["rowsKept"] == data["train"] + data["validation"] + data["test"]
    assert message["artifact"]["uri"] == "pvc://artifacts/job/run-3/artifact"
    assert message["artifact"]["digest"].startswith("sha256:")
    assert set(message["metrics"]) == {"evalLoss", "perplexity", "exactMatch"}
    assert len(log.read_bytes()) < 4096
