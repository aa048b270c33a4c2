"""Really train the tiny model (trl's habit): adapters change, the base does not, and it learns."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer import lean_lora, packed_attention, pipeline, splits
from kubetune_trainer import model as model_lib
from kubetune_trainer import train as train_lib
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.loss import mean_loss
from kubetune_trainer.objective import TokenObjective, micro_batches
from kubetune_trainer.recipe import load_config
from kubetune_trainer.train import param_groups, train

pytestmark = pytest.mark.slow


def prepare(spec_path, out_dir):
    cfg = load_config(str(spec_path))
    prepared = splits.prepare(cfg, out_dir)
    source = model_lib.resolve_model_source(cfg)
    tok = model_lib.load_tokenizer(source, cfg)
    data = pipeline.tokenize_splits(prepared, cfg, tok, "cpu")
    lm = model_lib.load_model(source, cfg, "cpu", torch.float32)
    return cfg, tok, data, lm


def cpu_dtype(cfg):
    return train_lib.resolve_precision(cfg.training.precision, "cpu")


def run_training(cfg, tok, data, lm, out_dir):
    return train(
        lm,
        data.train,
        data.validation,
        cfg.training,
        pad_id=tok.pad_token_id,
        device="cpu",
        dtype=cpu_dtype(cfg),
        output_dir=out_dir,
        prompt_learning=model_lib.uses_prompt_learning(cfg.method),
    )


def base_name(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "")


def test_lora_learns_the_glossary_and_leaves_the_base_untouched(write_spec, tmp_path):
    spec = write_spec(
        {
            "lora": {"r": 16, "dropout": 0.0},
            # batchSize 32: 7 steps per epoch of the 204 training rows, so 200 steps are ~30 epochs, as before
            # batchSize meant examples (it was a token budget of 8 x 128, ~34 of these ~25-token rows).
            "training": {
                "maxSteps": 200,
                "batchSize": 32,
                "evalSteps": 50,
                "scheduler": "cosine",
                "warmupRatio": 0.05,
            },
            "evaluation": {"maxNewTokens": 8},
        }
    )
    cfg, tok, data, lm = prepare(spec, tmp_path)
    base_before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    base_metrics = pipeline.evaluate(lm, tok, data, cfg, "cpu", cpu_dtype(cfg), prompt_learning=False)

    lm = model_lib.apply_method(lm, cfg)
    adapter_before = {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
    assert adapter_before and all("lora_" in n for n in adapter_before)
    result = run_training(cfg, tok, data, lm, tmp_path)
    tuned = pipeline.evaluate(lm, tok, data, cfg, "cpu", cpu_dtype(cfg), prompt_learning=False)

    assert result.steps == 200
    params = dict(lm.named_parameters())
    changed = [n for n, before in adapter_before.items() if not torch.equal(params[n], before)]
    assert len(changed) == len(adapter_before), "every LoRA matrix should have moved"
    for name, p in params.items():
        if not p.requires_grad:
            assert torch.equal(p, base_before[base_name(name)]), f"base weight {name} changed"
    assert tuned["evalLoss"] < base_metrics["evalLoss"] - 2.0, (base_metrics, tuned)
    assert base_metrics["exactMatch"] == 0.0
    assert tuned["exactMatch"] >= 0.3, tuned
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("lora", {"training": {"packing": False}}),
        ("ia3", {}),
        ("prefix", {"promptTuning": {"numVirtualTokens": 4}}),
        ("prompt", {"promptTuning": {"numVirtualTokens": 4}}),
        ("full", {"training": {"gradientCheckpointing": True, "layerwiseLrDecay": 0.8}}),
    ],
)
def test_each_method_trains_its_own_weights(write_spec, tmp_path, method, extra):
    spec = write_spec({"method": method, **extra, "training": {"maxSteps": 3, **extra.get("training", {})}})
    cfg, tok, data, lm = prepare(spec, tmp_path)
    lm = model_lib.apply_method(lm, cfg, cfg.training.gradient_checkpointing)
    trainable_before = {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in lm.named_parameters() if not p.requires_grad}
    result = run_training(cfg, tok, data, lm, tmp_path)
    assert result.steps == 3 and result.train_loss is not None and result.train_loss == result.train_loss
    params = dict(lm.named_parameters())
    assert any(not torch.equal(params[n], b) for n, b in trainable_before.items())
    assert all(torch.equal(params[n], b) for n, b in frozen_before.items())
    if method == "full":
        assert not frozen_before
    else:
        n_trainable = sum(p.numel() for p in trainable_before.values())
        assert n_trainable < 0.25 * sum(p.numel() for p in params.values())


def test_early_stopping_stops_when_validation_stalls(write_spec, tmp_path):
    # A learning rate this small cannot improve validation loss by minDelta=1.0 per evaluation.
    spec = write_spec(
        {
            "training": {
                "maxSteps": 50,
                "learningRate": 1e-6,
                "evalSteps": 1,
                "earlyStopping": {"patience": 2, "minDelta": 1.0},
            }
        }
    )
    cfg, tok, data, lm = prepare(spec, tmp_path)
    lm = model_lib.apply_method(lm, cfg)
    result = run_training(cfg, tok, data, lm, tmp_path)
    assert result.stopped_early and result.steps == 3  # best at step 1, no improvement at 2 and 3


def test_early_stopping_keeps_the_weights_of_the_best_evaluation(write_spec, tmp_path):
    # A learning rate this large overshoots after a first gain: validation loss goes up again.
    training = {"maxSteps": 40, "learningRate": 0.2, "evalSteps": 1, "scheduler": "constant", "warmupRatio": 0.0}
    spec = write_spec({"training": {**training, "earlyStopping": {"patience": 3}}, "lora": {"dropout": 0.0}})
    cfg, tok, data, lm = prepare(spec, tmp_path)
    lm = model_lib.apply_method(lm, cfg)
    result = run_training(cfg, tok, data, lm, tmp_path)
    evals = [h["evalLoss"] for h in result.history if h["evalLoss"] is not None]
    assert result.stopped_early and result.best_step is not None and result.best_step < result.steps, evals
    assert evals[-1] > result.best_eval_loss  # the stop point is worse than the best ...
    autocast = train_lib.autocast_factory("cpu", torch.float32)
    now = mean_loss(lm, data.validation, cfg.training.batch_size, tok.pad_token_id, "cpu", autocast)
    assert now == pytest.approx(result.best_eval_loss, rel=1e-6)  # ... and the model holds the best


def test_gradient_accumulation_weights_tokens_like_a_bigger_batch(write_spec, tmp_path):
    """2 micro-batches of 4 rows give the same step loss as 1 batch of 8 rows (token-weighted mean).

    (Weights are not compared: Adam's first step is sign-like, so float noise in near-zero
    gradients flips elements; the loss is the quantity accumulation must preserve.)
    """
    losses = []
    for bs, ga in ((8, 1), (4, 2)):
        training = {"maxSteps": 1, "batchSize": bs, "gradientAccumulationSteps": ga}
        spec = write_spec({"training": training, "lora": {"dropout": 0.0}})
        cfg, tok, data, lm = prepare(spec, tmp_path / f"{bs}")
        data.train = data.train[:8]  # exactly one optimizer step's worth of rows in both settings
        lm = model_lib.apply_method(lm, cfg)
        losses.append(run_training(cfg, tok, data, lm, tmp_path / f"{bs}").train_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_layerwise_lr_decay_groups():
    net = torch.nn.Module()
    net.embed_tokens = torch.nn.Linear(1, 1)
    net.layers = torch.nn.ModuleList([torch.nn.Linear(1, 1) for _ in range(3)])
    net.lm_head = torch.nn.Linear(1, 1)
    wrapper = torch.nn.Module()
    wrapper.model = net
    groups = param_groups(wrapper, 1.0, 0.5)
    assert [g["lr"] for g in groups] == [0.125, 0.25, 0.5, 1.0]  # embeddings, layers 0-2 (+ head)
    assert len(groups[-1]["params"]) == 4  # the LM head shares the top layer's rate


def test_micro_batches_are_ceil_examples_over_batch_size():
    rows = [{"input_ids": [0] * n} for n in (30, 10, 10, 60, 20)]
    cfg = TrainingConfig(batch_size=2, max_seq_length=60, packing=True)  # ceil(5 / 2) = 3 micro-batches
    # Packing: batchSize examples at random (one padding-free row each), whatever their lengths.
    assert micro_batches(rows, cfg, prompt_learning=False) == [[3, 1], [2, 4], [0]]  # seed 42
    assert micro_batches(rows, cfg, prompt_learning=True) == [[1, 2], [4, 0], [3]]  # virtual tokens: by length
    unpacked = TrainingConfig(batch_size=2, max_seq_length=60, packing=False)
    assert micro_batches(rows, unpacked, prompt_learning=False) == [[1, 2], [4, 0], [3]]


def test_packed_micro_batches_are_one_row_with_the_same_loss_and_gradients(write_spec, tmp_path, monkeypatch):
    spec = write_spec({"lora": {"dropout": 0.0}})
    cfg, tok, on_cpu, base = prepare(spec, tmp_path)
    lm = model_lib.apply_method(base, cfg)  # LoRA on all linear layers
    with torch.no_grad():  # peft starts B at zero: give the adapter something to say
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert on_cpu.varlen  # CPU too: one padding-free row, per-example sdpa (packed_attention.py)
    monkeypatch.setattr(pipeline, "attn_implementation", lambda device: "flash_attention_2")
    on_gpu = pipeline.tokenize_splits(splits.prepare(cfg, tmp_path), cfg, tok, device="cuda")
    assert on_gpu.varlen and on_gpu.train == on_cpu.train  # the layout is decided per micro-batch
    objective = TokenObjective(tok.pad_token_id, varlen=True)
    batch = objective.batches(on_cpu.train, cfg.training)[0]
    rows = [on_cpu.train[i] for i in batch]
    assert len(rows) == cfg.training.batch_size > 1  # HF's composition: batchSize examples, any lengths

    def loss_and_grads(loss_fn):
        lm.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in lm.parameters() if p.requires_grad]

    padded = loss_and_grads(lambda: TokenObjective(tok.pad_token_id).loss(lm, rows, rows, "cpu"))
    # transformers masks a packed row for sdpa by itself (a row x row mask: right, but slow on CPU)...
    masked = loss_and_grads(lambda: objective.loss(lm, rows, rows, "cpu"))
    with packed_attention.enabled(lm):  # ...per-example sdpa calls give the same, and so does the lean LoRA
        assert lm.config._attn_implementation == packed_attention.NAME
        per_example = loss_and_grads(lambda: objective.loss(lm, rows, rows, "cpu"))
        with lean_lora.enabled(lm) as switched:
            assert switched == 14  # q k v o gate up down, two layers
            assert all(lean_lora.merges(m, a) for m, a in lean_lora.lean_layers(lm))  # a tiny model: merged W
            lean = loss_and_grads(lambda: objective.loss(lm, rows, rows, "cpu"))
        monkeypatch.setattr(lean_lora, "merges", lambda *_: False)  # a real model's layers: the adapter form
        with lean_lora.enabled(lm):
            lean_adapter = loss_and_grads(lambda: objective.loss(lm, rows, rows, "cpu"))
    assert lm.config._attn_implementation == "sdpa"  # restored: export and serving see the model's own
    assert all("forward" not in vars(m) for m, _ in lean_lora.lean_layers(lm))  # peft's forward again
    for loss, grads in (masked, per_example, lean, lean_adapter):
        torch.testing.assert_close(loss, padded[0], atol=1e-5, rtol=1e-5)
        for g, want in zip(grads, padded[1], strict=True):
            torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-4)


def test_token_ids_are_cached_next_to_the_splits(write_spec, tmp_path, monkeypatch):
    cfg = load_config(str(write_spec()))
    prepared = splits.prepare(cfg, tmp_path)
    tok = model_lib.load_tokenizer(model_lib.resolve_model_source(cfg), cfg)
    first = pipeline.tokenize_splits(prepared, cfg, tok, device="cpu", cache_dir=tmp_path / "data")
    assert len(list((tmp_path / "data").glob("tokenized-*.json"))) == 1

    def no_tokenizing(*_args, **_kwargs):
        raise AssertionError("tokenised again although the cache holds these ids")

    real_tokenize_pair = pipeline.tokenize_pair
    monkeypatch.setattr(pipeline, "tokenize_pair", no_tokenizing)
    again = pipeline.tokenize_splits(prepared, cfg, tok, device="cpu", cache_dir=tmp_path / "data")
    assert (again.train, again.validation, again.test, again.dropped) == (
        first.train,
        first.validation,
        first.test,
        first.dropped,
    )
    # Anything that changes ids or labels (here: learning the prompt too) is a different cache entry.
    monkeypatch.setattr(pipeline, "tokenize_pair", real_tokenize_pair)
    cfg.training.prompt_loss = True
    with_prompt = pipeline.tokenize_splits(prepared, cfg, tok, device="cpu", cache_dir=tmp_path / "data")
    assert len(list((tmp_path / "data").glob("tokenized-*.json"))) == 2

    def targets(rows):
        return sum(label != -100 for r in rows for label in r["labels"])

    assert targets(with_prompt.train) > targets(first.train)
