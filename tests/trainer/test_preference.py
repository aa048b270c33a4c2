"""dpo and orpo: our losses equal trl's on the same batch, and real training on a learnable toy preference set
(chosen answers polite and careful, rejected ones curt) makes the model prefer held-out chosen answers."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kubetune_trainer import model as model_lib
from kubetune_trainer import pipeline, preference, splits
from kubetune_trainer import train as train_lib
from kubetune_trainer.recipe import load_config, run
from kubetune_trainer.sources import DataError
from tests.trainer.test_trainer_train import prepare

pytestmark = pytest.mark.slow
PAIRS = Path(__file__).resolve().parents[2] / "examples" / "data" / "preference" / "support-pairs.jsonl"


def pref_spec(method: str, **extra):
    spec = {
        "method": method,
        "dataset": {"uri": str(PAIRS), "format": "preference", "split": {"validation": 0.1, "test": 0.2}},
        "lora": {"r": 8, "dropout": 0.0},
        "training": {"maxSteps": 30, "learningRate": 5e-3, "evalSteps": 10, "warmupRatio": 0.0},
        "evaluation": {"metrics": ["perplexity", "preferenceAccuracy"], "maxNewTokens": 4},
    }
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


def test_pairs_are_cleaned_deduplicated_and_split_like_other_data(write_spec, tmp_path):
    rows = PAIRS.read_text().splitlines()
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(rows + rows[:3] + ['{"prompt": "x", "chosen": " ", "rejected": "y"}']) + "\n")
    spec = pref_spec("dpo")
    spec["dataset"]["uri"] = str(data)
    cfg = load_config(str(write_spec(spec)))
    prepared = splits.prepare(cfg, tmp_path)
    counts = prepared.counts()
    assert counts["duplicatesDropped"] == 3 and counts["emptyDropped"] == 1 and counts["rowsKept"] == len(rows)
    assert {k: counts[k] for k in ("train", "validation", "test")} == {"train": 42, "validation": 6, "test": 12}
    again = splits.prepare(cfg, tmp_path / "again")
    assert again.splits == prepared.splits  # seeded: the same split every time


CHAT_PAIRS = PAIRS.with_name("support-pairs-chat.jsonl")  # the same pairs as chat messages (trl's conversational)


def test_conversational_pairs_render_the_prompt_as_chat_and_train_on_the_answers(write_spec, tmp_path):
    spec = pref_spec("dpo")
    spec["dataset"]["uri"] = str(CHAT_PAIRS)
    cfg, tok, data, _ = prepare(write_spec(spec), tmp_path)
    row = json.loads(CHAT_PAIRS.read_text().splitlines()[0])
    pair = preference.tokenize_preference(row, cfg.dataset.fields, tok, cfg.training.max_seq_length)
    assert pair is not None
    chosen = [t for t, lab in zip(pair["input_ids"], pair["labels"], strict=True) if lab != -100]
    assert tok.decode(chosen).strip().startswith(row["chosen"][0]["content"][:10])
    prompt = tok.decode(pair["input_ids"][: len(pair["input_ids"]) - len(chosen)])
    assert row["prompt"][0]["content"] in prompt and "### Instruction" not in prompt
    assert len(data.train) == 42  # cleaned and split like the string pairs

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**row, "prompt": row["chosen"]}) + "\n")
    spec["dataset"]["uri"] = str(bad)
    with pytest.raises(DataError, match=r"row 1: field 'prompt' must end with a user message"):
        splits.prepare(load_config(str(write_spec(spec, "bad.yaml"))), tmp_path / "bad")


# -- our losses vs trl's --------------------------------------------------------------------------------


def _policy_and_rows(write_spec, tmp_path, method):
    """A LoRA policy whose adapter is not zero (so policy != reference), and 6 tokenised pairs."""
    from trl.trainer.utils import add_fused_lm_head

    cfg, tok, data, lm = prepare(write_spec(pref_spec(method)), tmp_path)
    add_fused_lm_head(lm, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # before PEFT, as trl does
    torch.manual_seed(0)
    lm = model_lib.apply_method(lm, cfg)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return cfg, tok, lm, data.train[:6]


def _trl_dpo_inputs(rows, pad_id):
    """trl's DPO batch: [chosen..., rejected...] right-padded, completion_mask on the response tokens."""
    seqs = [(r["input_ids"], r["labels"]) for r in rows] + [
        (r["rejected_input_ids"], r["rejected_labels"]) for r in rows
    ]
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in seqs])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in seqs])
    # our labels are pre-shifted: label i is token i+1; trl marks token i+1 itself as completion
    completion = torch.tensor([[0] + [int(t != -100) for t in lab[:-1]] + [0] * (width - len(lab)) for _, lab in seqs])
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


def _trl_dpo_loss(lm, rows, pad_id, loss_type, beta, label_smoothing=0.0):
    """trl.DPOTrainer._compute_loss on a minimal stand-in for the trainer (no accelerate, one process)."""
    from trl import DPOTrainer

    same = lambda x: x  # noqa: E731
    fake = SimpleNamespace(
        model=lm,
        ref_model=None,
        accelerator=SimpleNamespace(
            device=torch.device("cpu"), unwrap_model=same, gather_for_metrics=same, gather=same
        ),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=False,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return DPOTrainer._compute_loss(fake, lm, _trl_dpo_inputs(rows, pad_id), return_outputs=False)


@pytest.mark.parametrize(("loss_type", "beta"), [("sigmoid", 0.1), ("hinge", 0.5), ("ipo", 0.3)])
def test_dpo_losses_equal_trls(write_spec, tmp_path, loss_type, beta):
    _, tok, lm, rows = _policy_and_rows(write_spec, tmp_path, "dpo")
    ours = preference.PreferenceObjective("dpo", beta, loss_type, 0.0, 0.1, tok.pad_token_id, lm)
    with torch.no_grad():
        mine = ours.loss(lm, rows, rows, "cpu")
        theirs = _trl_dpo_loss(lm, rows, tok.pad_token_id, loss_type, beta)
    assert mine.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(mine.item() - {"sigmoid": 0.6931, "hinge": 1.0, "ipo": (1 / (2 * beta)) ** 2}[loss_type]) > 1e-4


def test_dpo_label_smoothing_equals_trls_conservative_dpo(write_spec, tmp_path):
    """trl 1.16's sigmoid has no smoothing; its `aot` loss is conservative DPO once a batch holds one pair
    (its sort is then the identity), so compare pair by pair."""
    _, tok, lm, rows = _policy_and_rows(write_spec, tmp_path, "dpo")
    ours = preference.PreferenceObjective("dpo", 0.1, "sigmoid", 0.2, 0.1, tok.pad_token_id, lm)
    with torch.no_grad():
        mine = ours.loss(lm, rows, rows, "cpu").item()
        theirs = sum(_trl_dpo_loss(lm, [r], tok.pad_token_id, "aot", 0.1, 0.2).item() for r in rows) / len(rows)
    assert mine == pytest.approx(theirs, abs=1e-5)


def test_orpo_loss_equals_trls(write_spec, tmp_path):
    """trl's ORPO: NLL - mean(odds_ratio_loss) on length-averaged log-probs (get_batch_logps). trl's NLL
    also covers the prompt; ours, like our SFT, covers the response only, so trl is given response labels."""
    from trl.experimental.orpo import ORPOTrainer

    _, tok, lm, rows = _policy_and_rows(write_spec, tmp_path, "orpo")
    inputs = _trl_dpo_inputs(rows, tok.pad_token_id)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    with torch.no_grad():
        mine = preference.PreferenceObjective("orpo", 0.1, "sigmoid", 0.0, 0.25, tok.pad_token_id, lm)
        ours = mine.loss(lm, rows, rows, "cpu")
        logits = lm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        mean_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
        n = len(rows)
        nll = torch.nn.CrossEntropyLoss()(logits[:n, :-1].reshape(-1, logits.shape[-1]), labels[:n, 1:].reshape(-1))
        fake = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
        odds = ORPOTrainer.odds_ratio_loss(fake, mean_logps[:n], mean_logps[n:])[0]
    assert ours.item() == pytest.approx((nll - odds.mean()).item(), abs=1e-5)


# -- real training ---------------------------------------------------------------------------------------


def base_name(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "")


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_training_prefers_held_out_chosen_answers(write_spec, tmp_path, method):
    cfg, tok, data, lm = prepare(write_spec(pref_spec(method)), tmp_path)
    dtype = train_lib.resolve_precision(cfg.training.precision, "cpu")
    base_before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    base = pipeline.evaluate(lm, tok, data, cfg, "cpu", dtype, prompt_learning=False)
    lm = model_lib.apply_method(lm, cfg)
    adapter_before = {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
    objective = preference.objective(lm, cfg, tok.pad_token_id)
    result = train_lib.train(
        lm, data.train, data.validation, cfg.training, pad_id=tok.pad_token_id, device="cpu", dtype=dtype,
        output_dir=tmp_path, objective=objective,
    )  # fmt: skip
    tuned = pipeline.evaluate(lm, tok, data, cfg, "cpu", dtype, False, objective=objective)
    print(method, "base", base, "tuned", tuned)

    assert result.steps == 30 and result.best_eval_loss is not None
    assert tuned["preferenceAccuracy"] >= base["preferenceAccuracy"] + 0.5, (base, tuned)
    assert tuned["rewardMargin"] > 0 and "rewardMargin" not in base
    params = dict(lm.named_parameters())
    assert all(not torch.equal(params[n], b) for n, b in adapter_before.items() if "lora_B" in n)
    for name, p in params.items():
        if not p.requires_grad:
            assert torch.equal(p, base_before[base_name(name)]), f"base weight {name} changed"
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_dpo_with_a_full_policy_keeps_a_frozen_reference(write_spec, tmp_path):
    spec = pref_spec("dpo", training={"maxSteps": 3, "learningRate": 1e-3}, preference={"policy": "full"})
    spec.pop("lora")
    cfg, tok, data, lm = prepare(write_spec(spec), tmp_path)
    lm = model_lib.apply_method(lm, cfg)
    objective = preference.objective(lm, cfg, tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in objective.reference.named_parameters()}
    train_lib.train(
        lm, data.train, data.validation, cfg.training, pad_id=tok.pad_token_id, device="cpu", dtype=torch.float32,
        output_dir=tmp_path, objective=objective,
    )  # fmt: skip
    ref = dict(objective.reference.named_parameters())
    assert all(torch.equal(ref[n], b) and not ref[n].requires_grad for n, b in before.items())
    assert any(not torch.equal(p, before[n]) for n, p in lm.named_parameters())


def test_dpo_job_end_to_end_reports_base_and_tuned_preference_accuracy(write_spec, tmp_path):
    spec = pref_spec("dpo", evaluation={"gates": {"minPreferenceAccuracy": 0.75}})
    outcome = run(str(write_spec(spec)), str(tmp_path / "out"))
    report = pipeline.json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["base"]["preferenceAccuracy"] < 0.5 < report["tuned"]["preferenceAccuracy"], report
    assert report["gates"]["minPreferenceAccuracy"] == 0.75
    assert outcome["evalPassed"] == (report["tuned"]["preferenceAccuracy"] >= 0.75)
    assert outcome["metrics"]["rewardMargin"] > 0 and outcome["artifact"]["kind"] == "adapter"
    assert outcome["steps"] == 30


def test_a_dpo_run_resumed_from_its_checkpoint_ends_with_the_same_adapter(write_spec, tmp_path):
    """The preference objective runs inside the shared loop: its checkpoints resume like any run's."""
    spec = write_spec(pref_spec("dpo", training={"maxSteps": 6, "checkpointSteps": 3, "evalSteps": 3}))

    def train_in(out, after_step=None):
        cfg, tok, data, lm = prepare(spec, out)
        torch.manual_seed(cfg.training.seed)
        lm = model_lib.apply_method(lm, cfg)
        objective = preference.objective(lm, cfg, tok.pad_token_id)
        result = train_lib.train(
            lm, data.train, data.validation, cfg.training, pad_id=tok.pad_token_id, device="cpu",
            dtype=torch.float32, output_dir=out, objective=objective, after_step=after_step,
        )  # fmt: skip
        return result, {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}

    _, straight = train_in(tmp_path / "straight")

    def crash(step):
        if step == 3:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        train_in(tmp_path / "resumed", crash)
    result, resumed = train_in(tmp_path / "resumed")
    assert result.resumed_from is not None and result.resumed_from.endswith("step-3") and result.steps == 6
    assert all(torch.allclose(resumed[n], w, atol=1e-6) for n, w in straight.items())
