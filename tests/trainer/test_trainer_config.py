import pytest

from kubetune_trainer.config import ConfigError, camel, parse_job, snake


def job(**spec):
    base = {"baseModel": {"uri": "/models/tiny"}, "dataset": {"uri": "/data/d.jsonl"}, "output": {"uri": "/out"}}
    base.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"}, "spec": base}


def test_defaults_follow_the_contract():
    cfg = parse_job(job(), cuda_available=False)
    assert cfg.method == "lora"
    assert (cfg.lora.r, cfg.lora.scaling, cfg.lora.target_modules) == (16, 32.0, ["all-linear"])
    assert cfg.dataset.format == "instruction"
    assert (cfg.dataset.split.validation, cfg.dataset.split.test, cfg.dataset.split.seed) == (0.1, 0.1, 42)
    t = cfg.training
    assert (t.learning_rate, t.batch_size, t.max_seq_length, t.packing, t.precision) == (2e-4, 8, 1024, True, "auto")
    assert cfg.evaluation.metrics == ["perplexity", "exactMatch"]
    assert cfg.name == "j"


def test_alpha_defaults_to_twice_r_and_operator_fields_parse_too():
    cfg = parse_job(job(lora={"r": 4}, resources={"gpus": 1}, image="x", schedule="@daily", suspend=False))
    assert cfg.lora.scaling == 8.0
    assert cfg.resources.gpus == 1 and cfg.schedule == "@daily"


def test_the_trainer_accepts_only_what_the_apiserver_accepts():
    """One model: a key the CRD does not have is an error here too (the apiserver's strict decoding)."""
    with pytest.raises(ConfigError, match=r"spec\.resources\.gpu: Extra inputs are not permitted"):
        parse_job(job(resources={"gpu": 1}))


def test_camel_snake_round_trip():
    assert camel("gradient_accumulation_steps") == "gradientAccumulationSteps"
    assert snake("gradientAccumulationSteps") == "gradient_accumulation_steps"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"lora": {"alpha": 32}}, "lora.alpha requires lora.r"),
        ({"lora": {"r": 0}}, "spec.lora.r"),
        ({"lora": {"rank": 8}}, "spec.lora.rank"),
        ({"dataset": {"uri": "/d", "split": {"test": 1.0}}}, "spec.dataset.split.test"),
        ({"dataset": {"uri": "/d", "split": {"validation": -0.1}}}, "spec.dataset.split.validation"),
        ({"dataset": {"uri": "/d", "split": {"validation": 0.5, "test": 0.5}}}, "spec.dataset.split"),
        ({"dataset": {"format": "instruction"}}, "spec.dataset.uri"),
        ({"dataset": {"uri": "/d", "format": "xml"}}, "spec.dataset.format"),
        ({"dataset": {"uri": "/d", "mix": {"uri": "/g.txt", "fraction": 0.2}}}, "spec.dataset.mix"),
        (
            {"dataset": {"uri": "/d", "format": "text", "mix": {"uri": "/g", "fraction": 1.5}}},
            "spec.dataset.mix.fraction",
        ),
        ({"dataset": {"uri": "/d", "cleaning": {"maxChars": 0}}}, "spec.dataset.cleaning.maxChars"),
        ({"method": "dora"}, "spec.method"),
        ({"method": "ia3", "lora": {"r": 8}}, "spec.lora"),
        ({"method": "lora", "promptTuning": {"numVirtualTokens": 8}}, "spec.promptTuning"),
        ({"method": "lora", "quantization": {"bits": 4}}, "spec.quantization"),
        ({"method": "qlora"}, "spec.quantization"),
        ({"method": "qlora", "quantization": {}}, "spec.method: qlora"),  # no CUDA on this machine
        ({"training": {"precision": "fp16"}}, "spec.training.precision"),
        ({"training": {"batchSize": 0}}, "spec.training.batchSize"),
        ({"training": {"batchSize": "8"}}, "spec.training.batchSize"),
        ({"training": {"packing": "yes"}}, "spec.training.packing"),
        ({"training": {"layerwiseLrDecay": 1.5}}, "spec.training.layerwiseLrDecay"),
        ({"training": {"scheduler": "step"}}, "spec.training.scheduler"),
        ({"training": {"earlyStopping": {"patience": -1}}}, "spec.training.earlyStopping.patience"),
        ({"evaluation": {"metrics": ["bleu"]}}, "spec.evaluation.metrics"),
        ({"evaluation": {"metrics": ["perplexity"], "gates": {"minExactMatch": 0.5}}}, "gates.minExactMatch"),
        ({"baseModel": {"name": "a", "uri": "/b"}}, "spec.baseModel"),
        ({"baseModel": {}}, "spec.baseModel"),
        ({"method": "prompt", "output": {"uri": "/out", "mergeWeights": True}}, "spec.output.mergeWeights"),
        ({"training": {"distributed": {"strategy": "zero3"}}}, "spec.training.distributed.strategy"),
        ({"method": "prefix", "training": {"distributed": {"strategy": "fsdp"}}}, "fsdp supports method"),
        (
            {"training": {"distributed": {"strategy": "fsdp"}}, "output": {"uri": "/out", "mergeWeights": True}},
            "mergeWeights",
        ),
        ({"training": {"distributed": {"processesPerNode": 0}}}, "spec.training.distributed.processesPerNode"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(ConfigError) as err:
        parse_job(job(**spec), cuda_available=False)
    assert field in str(err.value)


def test_qlora_accepted_when_cuda_is_there():
    cfg = parse_job(job(method="qlora", quantization={"quantType": "fp4"}), cuda_available=True)
    assert cfg.quantization.quant_type == "fp4"


def test_not_a_finetunejob():
    with pytest.raises(ConfigError, match="kind"):
        parse_job({"kind": "Pod", "spec": {}})
