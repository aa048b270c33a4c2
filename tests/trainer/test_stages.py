"""Two stages of real training on the tiny model: continued pre-training, then instruction tuning from it.

Stage 1 trains a lora adapter on raw text (dataset.format text, with the general-data mix); stage 2 names
that artifact in spec.initFrom.uri and must start from exactly those weights, move them, and record where
they came from in its model card and result.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune_trainer import train as train_lib
from kubetune_trainer.config import ConfigError
from kubetune_trainer.recipe import run
from tests.trainer.conftest import GLOSSARY, REPO, read_json

pytestmark = pytest.mark.slow

GENERAL = REPO / "examples" / "data" / "general.txt"
STEPS = {"maxSteps": 4, "evalSteps": 2}


def domain_text(path: Path) -> Path:
    """The glossary as raw sentences: what continued pre-training reads."""
    rows = [json.loads(line) for line in GLOSSARY.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({"text": f"{r['prompt']} It means {r['response']}."}) + "\n" for r in rows))
    return path


def adapter_weights(artifact: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(artifact) / "adapter_model.safetensors"))


@pytest.fixture
def stage1(write_spec, tmp_path):
    text = domain_text(tmp_path / "ops.jsonl")
    dataset = {"uri": str(text), "format": "text", "mix": {"uri": str(GENERAL), "fraction": 0.2}}
    spec = write_spec({"dataset": dataset, "training": STEPS, "evaluation": {"metrics": ["perplexity"]}}, "cpt.yaml")
    return run(str(spec), output=str(tmp_path / "cpt"))


def test_instruction_stage_continues_the_pretraining_stage_adapter(stage1, write_spec, tmp_path, monkeypatch):
    parent = stage1["artifact"]
    assert stage1["phase"] == "Succeeded" and parent["kind"] == "adapter"
    assert stage1["lineage"]["initFrom"] is None and stage1["lineage"]["mixSha256"].startswith("sha256:")
    assert stage1["lineage"]["mixUri"] == str(GENERAL)

    # Spy on what training starts from: the trainable weights as train() receives them.
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_train = train_lib.train

    def spy(model, *args, **kwargs):
        import peft

        seen["start"] = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()}
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(train_lib, "train", spy)
    spec = write_spec({"initFrom": {"uri": parent["uri"]}, "training": STEPS}, name="sft.yaml")
    result = run(str(spec), output=str(tmp_path / "sft"))

    before = adapter_weights(parent["uri"])
    assert seen["start"].keys() == before.keys()
    assert all(torch.equal(seen["start"][k], before[k]) for k in before), "stage 2 must start from stage 1's adapter"
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"]), "the loaded adapter must train"
    after = adapter_weights(result["artifact"]["uri"])
    moved = [k for k in before if not torch.equal(after[k], before[k])]
    assert len(moved) == len(before), "every lora matrix should have moved in stage 2"

    lineage = result["lineage"]
    assert lineage["initFrom"] == {"uri": parent["uri"], "digest": parent["digest"], "kind": "adapter", "parent": None}
    assert lineage["datasetUri"] == str(GLOSSARY) and lineage["datasetSha256"].startswith("sha256:")
    card = read_json(Path(result["artifact"]["uri"]) / "model_card.json")
    assert card["lineage"] == lineage
    assert read_json(tmp_path / "sft" / "result.json")["lineage"] == lineage


def test_a_method_that_cannot_continue_the_adapter_is_refused_before_training(stage1, write_spec, tmp_path):
    spec = write_spec({"method": "ia3", "initFrom": {"uri": stage1["artifact"]["uri"]}}, name="ia3.yaml")
    with pytest.raises(ConfigError, match=r"spec\.initFrom: .* is a LORA adapter, which spec\.method ia3 cannot"):
        run(str(spec), output=str(tmp_path / "ia3"))
    assert not (tmp_path / "ia3" / "data").exists(), "refused before the data was read"


def test_a_parent_reference_needs_the_operator_to_resolve_it(write_spec, tmp_path):
    spec = write_spec({"initFrom": {"fineTuneJobRef": {"name": "cpt"}}}, name="ref.yaml")
    with pytest.raises(ConfigError, match=r"spec\.initFrom\.fineTuneJobRef 'cpt': the operator resolves"):
        run(str(spec), output=str(tmp_path / "ref"))


def test_a_model_artifact_becomes_the_base_model(write_spec, tmp_path):
    training = {"maxSteps": 3, "scheduler": "constant"}
    full = run(str(write_spec({"method": "full", "training": training}, name="full.yaml")), str(tmp_path / "f"))
    assert full["artifact"]["kind"] == "model"
    spec = write_spec({"initFrom": {"uri": full["artifact"]["uri"]}, "training": {"maxSteps": 1}}, name="lora.yaml")
    result = run(str(spec), output=str(tmp_path / "lora"))
    assert result["lineage"]["initFrom"]["kind"] == "model"
    # Stage 2 starts where the full fine-tune ended, not from the tiny base: same data, same test split.
    assert full["metrics"]["evalLoss"] < full["baseMetrics"]["evalLoss"]
    assert result["baseMetrics"]["evalLoss"] == pytest.approx(full["metrics"]["evalLoss"], rel=1e-4)
