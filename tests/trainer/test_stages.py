"""Two stages of real training on the tiny model: continued pre-training, then instruction tuning from it.

Stage 1 trains a lora adapter on raw text (dataset.format text, with the general-data mix); stage 2 names
that artifact in spec.initFrom.uri and must start from exactly those weights, move them, and record where
they came from in its model card and result.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kubetune_trainer import init_from
from kubetune_trainer import train as train_lib
from kubetune_trainer.config import ConfigError, parse_job
from kubetune_trainer.export import directory_digest
from kubetune_trainer.recipe import run
from tests.trainer.conftest import GLOSSARY, REPO, read_json

GENERAL = REPO / "examples" / "data" / "general.txt"
STEPS = {"maxSteps": 4, "evalSteps": 2}


def domain_text(path: Path) -> Path:
    """The glossary as raw sentences: what continued pre-training reads."""
    rows = [json.loads(line) for line in GLOSSARY.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({"text": f"{r['prompt']} It means {r['response']}."}) + "\n" for r in rows))
    return path


def adapter_weights(artifact: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(artifact) / "adapter_model.safetensors"))


def start_weights(monkeypatch) -> dict[str, dict[str, torch.Tensor]]:
    """Spy on what training starts from: the adapter and the trainable names as train() receives them."""
    seen: dict[str, Any] = {}
    real_train = train_lib.train

    def spy(model, *args, **kwargs):
        import peft

        seen["start"] = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()}
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(train_lib, "train", spy)
    return seen


@pytest.fixture
def stage1(write_spec, tmp_path):
    text = domain_text(tmp_path / "ops.jsonl")
    dataset = {"uri": str(text), "format": "text", "mix": {"uri": str(GENERAL), "fraction": 0.2}}
    spec = write_spec({"dataset": dataset, "training": STEPS, "evaluation": {"metrics": ["perplexity"]}}, "cpt.yaml")
    return run(str(spec), output=str(tmp_path / "cpt"))


@pytest.mark.slow
def test_instruction_stage_continues_the_pretraining_stage_adapter(stage1, write_spec, tmp_path, monkeypatch):
    parent = stage1["artifact"]
    assert stage1["phase"] == "Succeeded" and parent["kind"] == "adapter"
    assert stage1["lineage"]["initFrom"] is None and stage1["lineage"]["mixSha256"].startswith("sha256:")
    assert stage1["lineage"]["mixUri"] == str(GENERAL)

    seen = start_weights(monkeypatch)
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


@pytest.mark.slow
def test_a_method_that_cannot_continue_the_adapter_is_refused_before_training(stage1, write_spec, tmp_path):
    spec = write_spec({"method": "ia3", "initFrom": {"uri": stage1["artifact"]["uri"]}}, name="ia3.yaml")
    with pytest.raises(ConfigError, match=r"spec\.initFrom: .* is a LORA adapter, which spec\.method ia3 cannot"):
        run(str(spec), output=str(tmp_path / "ia3"))
    assert not (tmp_path / "ia3" / "data").exists(), "refused before the data was read"


def test_a_parent_reference_needs_the_operator_to_resolve_it(write_spec, tmp_path):
    spec = write_spec({"initFrom": {"fineTuneJobRef": {"name": "cpt"}}}, name="ref.yaml")
    with pytest.raises(ConfigError, match=r"spec\.initFrom\.fineTuneJobRef 'cpt': the operator resolves"):
        run(str(spec), output=str(tmp_path / "ref"))


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("ia3", {}),
        ("prefix", {"promptTuning": {"numVirtualTokens": 4}}),
        ("prompt", {"promptTuning": {"numVirtualTokens": 4}}),
    ],
)
def test_each_adapter_family_continues_its_own_adapter(write_spec, tmp_path, monkeypatch, method, extra):
    parent = run(str(write_spec({"method": method, **extra, "training": STEPS}, name="p.yaml")), str(tmp_path / "p"))
    seen = start_weights(monkeypatch)
    child = write_spec({"method": method, **extra, "initFrom": {"uri": parent["artifact"]["uri"]}, "training": STEPS})
    result = run(str(child), output=str(tmp_path / "c"))
    before = adapter_weights(parent["artifact"]["uri"])
    assert seen["trainable"] and all(torch.equal(seen["start"][k], before[k]) for k in before)
    after = adapter_weights(result["artifact"]["uri"])
    assert any(not torch.equal(after[k], before[k]) for k in before)


# --- without training: what resolve and check_method read and refuse ---------------------------------------


def fake_adapter(path: Path, peft_type: str) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    return path


def config_with(write_spec, init_from: dict[str, Any], init_artifact: dict[str, Any] | None = None, **spec: Any):
    import yaml

    obj = yaml.safe_load(write_spec({"initFrom": init_from, **spec}).read_text())
    if init_artifact is not None:
        obj["initArtifact"] = init_artifact
    return parse_job(obj, cuda_available=True)  # qlora rows: no GPU is used here


@pytest.mark.parametrize(
    ("method", "peft_type", "ok"),
    [
        ("lora", "LORA", True),
        ("qlora", "LORA", True),
        ("ia3", "IA3", True),
        ("prefix", "PREFIX_TUNING", True),
        ("prompt", "PROMPT_TUNING", True),
        ("prompt", "PREFIX_TUNING", False),
        ("lora", "IA3", False),
        ("full", "LORA", False),
    ],
)
def test_an_adapter_continues_only_under_its_own_method_family(write_spec, tmp_path, method, peft_type, ok):
    adapter = fake_adapter(tmp_path / "adapter", peft_type)
    extra: dict[str, Any] = {"quantization": {}, "resources": {"gpus": 1}} if method == "qlora" else {}
    cfg = config_with(write_spec, {"uri": str(adapter)}, method=method, **extra)
    init = init_from.resolve(cfg)
    assert init is not None and init.kind == "adapter" and init.digest == directory_digest(adapter)
    if ok:
        init_from.check_method(cfg, init)
    else:
        with pytest.raises(ConfigError, match=rf"spec\.initFrom: .* is a {peft_type} adapter, which spec\.method"):
            init_from.check_method(cfg, init)


def test_the_operators_artifact_is_used_and_its_digest_checked(write_spec, tmp_path):
    adapter = fake_adapter(tmp_path / "parent" / "artifact", "LORA")
    given = {
        "uri": str(adapter),
        "digest": directory_digest(adapter),
        "kind": "adapter",
        "parent": {"name": "cpt", "run": 3},
    }
    init = init_from.resolve(config_with(write_spec, {"fineTuneJobRef": {"name": "cpt"}}, given))
    assert init is not None and init.parent == {"name": "cpt", "run": 3}
    assert init_from.record(init) == {
        "uri": str(adapter),
        "digest": given["digest"],
        "kind": "adapter",
        "parent": given["parent"],
    }
    changed = {**given, "digest": "sha256:other"}
    with pytest.raises(ConfigError, match="the artifact changed after its run finished"):
        init_from.resolve(config_with(write_spec, {"fineTuneJobRef": {"name": "cpt"}}, changed))


def test_a_directory_without_weights_is_refused(write_spec, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds neither a peft adapter nor model weights"):
        init_from.resolve(config_with(write_spec, {"uri": str(tmp_path / "empty")}))
    with pytest.raises(ConfigError, match="is not a directory"):
        init_from.resolve(config_with(write_spec, {"uri": str(tmp_path / "missing")}))


@pytest.mark.slow
def test_a_dpo_stage_continues_the_sft_adapter_against_it_as_reference(write_spec, tmp_path, monkeypatch):
    """instruction -> DPO: the preference stage trains the parent's adapter further, and its reference is
    the parent (its adapter held a second time, frozen), not the bare base; the artifact holds one adapter."""
    from kubetune_trainer import preference
    from tests.trainer.test_preference import pref_spec

    sft = run(str(write_spec({"training": STEPS}, "sft.yaml")), output=str(tmp_path / "sft"))
    parent = sft["artifact"]
    seen: dict[str, Any] = {}
    real_train = train_lib.train

    def spy(model, rows, *args, **kwargs):
        objective = kwargs["objective"]
        batch = rows[:4]
        with torch.no_grad():
            seen["policy"] = preference.sequence_logps(model, batch, objective.pad_id, "cpu")[0]
        seen["reference"] = objective.reference_logps(batch, "cpu")
        with torch.no_grad(), model.disable_adapter():
            seen["base"] = preference.sequence_logps(model, batch, objective.pad_id, "cpu")[0]
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return real_train(model, rows, *args, **kwargs)

    monkeypatch.setattr(train_lib, "train", spy)
    spec = pref_spec("dpo", training={"maxSteps": 4, "evalSteps": 2}, lora={})
    spec["initFrom"] = {"uri": parent["uri"]}
    spec.pop("lora")  # the parent's adapter decides the rank
    result = run(str(write_spec(spec, "dpo.yaml")), output=str(tmp_path / "dpo"))

    assert result["phase"] == "Succeeded"
    assert torch.allclose(seen["reference"], seen["policy"]), "at the start the policy is its reference"
    assert not torch.allclose(seen["reference"], seen["base"]), "the reference is the parent, not the base"
    assert seen["trainable"] and all(".default." in n for n in seen["trainable"]), "only the policy trains"
    artifact = Path(result["artifact"]["uri"])
    assert not (artifact / preference.REFERENCE_ADAPTER).exists(), "the reference adapter is not exported"
    before, after = adapter_weights(parent["uri"]), adapter_weights(str(artifact))
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in before)
    assert result["lineage"]["initFrom"]["digest"] == parent["digest"]
