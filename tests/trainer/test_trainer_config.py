import pytest

from kubetune_trainer.config import ConfigError, parse_job
from tests.support.bad_specs import BAD_SPECS, FTJ, Case, spec_of


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


FTJ_ROWS = [c for c in BAD_SPECS if c.kind == FTJ]


@pytest.mark.parametrize("case", FTJ_ROWS, ids=[c.id for c in FTJ_ROWS])
def test_the_trainer_rejects_every_bad_spec_in_the_shared_table(case: Case):
    """The table the apiserver and the API parser reject (tests/support/bad_specs.py): the trainer, too."""
    obj = {"kind": "FineTuneJob", "metadata": {"name": "j"}, "spec": spec_of(case)}
    with pytest.raises(ConfigError) as err:
        parse_job(obj, cuda_available=True)
    assert case.names in str(err.value)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"method": "qlora", "quantization": {}}, "spec.method: qlora"),
        ({"training": {"precision": "fp16"}}, "spec.training.precision"),
    ],
)
def test_what_this_machine_lacks_names_the_field(spec, field):
    """Valid specs the trainer still refuses: it runs without CUDA here."""
    with pytest.raises(ConfigError) as err:
        parse_job(job(**spec), cuda_available=False)
    assert field in str(err.value)


def test_qlora_accepted_when_cuda_is_there():
    cfg = parse_job(job(method="qlora", quantization={"quantType": "fp4"}), cuda_available=True)
    assert cfg.quantization.quant_type == "fp4"


def test_not_a_finetunejob():
    with pytest.raises(ConfigError, match="kind"):
        parse_job({"kind": "Pod", "spec": {}})
