"""batchSize means what it means in HF Trainer: the same batchSize/maxSeqLength/accumulation on the same
data gives HF's number of optimizer steps per epoch, with packing on or off (issue 14)."""

from __future__ import annotations

import math
import random

import pytest

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.objective import TokenObjective, micro_batches, plan_steps, step_plan
from kubetune_trainer.packing import batch_indices


def long_tail(n: int, max_len: int = 512, seed: int = 0) -> list[dict[str, list[int]]]:
    """Examples of log-normal length (median 60 tokens, a tail up to max_len), like real instruction data."""
    rng = random.Random(seed)
    lengths = [min(max_len, max(4, int(rng.lognormvariate(math.log(60), 1.2)))) for _ in range(n)]
    return [{"input_ids": [1] * k, "labels": [1] * k} for k in lengths]


def hf_trainer(tiny_model_dir, tmp_path, data, batch_size: int, accumulation: int, **extra):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    targs = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        **extra,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return Trainer(model=model, args=targs, train_dataset=data, data_collator=pad)


def pad(rows):
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["input_ids"] + [-100] * (width - len(r["input_ids"])) for r in rows])
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("packing", [True, False])
def test_issue_example_takes_hf_steps_per_epoch(tiny_model_dir, tmp_path, packing):
    """The issue's numbers: 1,472 long-tailed examples, batchSize 8, maxSeqLength 512. HF's dataloader has
    184 batches (so 184 steps); the old token budget (8 x 512 tokens per micro-batch) made 42 here."""
    rows = long_tail(1472)
    cfg = TrainingConfig(batch_size=8, max_seq_length=512, packing=packing)
    ours = TokenObjective(0, varlen=packing).batches(rows, cfg)
    hf = len(hf_trainer(tiny_model_dir, tmp_path, rows, 8, 1).get_train_dataloader())
    assert hf == 184
    assert len(ours) == hf and plan_steps(len(ours), cfg)[0] == hf
    assert sorted(i for b in ours for i in b) == list(range(len(rows)))  # every example once per epoch
    assert [len(b) for b in ours] == [8] * 184  # batchSize examples, packed or not
    widths = [len(rows[i]["input_ids"]) for b in ours for i in b]
    padded = sum(len(b) * max(len(rows[i]["input_ids"]) for i in b) for b in ours)
    if packing:  # one padding-free row each: HF's random composition, not grouped by length
        assert ours == micro_batches(rows, cfg, prompt_learning=False) != batch_indices(rows, 8)
        assert padded > 2 * sum(widths)  # what padding these rows would have cost
    else:
        assert padded <= 1.05 * sum(widths)  # right-padded rows: grouped by length, little padding
    plan = step_plan(rows, TokenObjective(0), cfg, len(ours), 1)
    assert plan["examplesPerStep"] == 8.0 and plan["stepsPerEpoch"] == 184
    assert plan["tokensPerStep"] == round(sum(widths) / 184, 1)


@pytest.mark.parametrize(
    ("n", "batch_size", "accumulation"), [(1, 8, 1), (7, 8, 1), (100, 3, 1), (90, 4, 3), (33, 1, 4)]
)
@pytest.mark.parametrize("packing", [True, False])
def test_steps_per_epoch_are_hf_formula(n, batch_size, accumulation, packing):
    """HF Trainer: ceil(len(dataloader) / gradient_accumulation_steps), len(dataloader) = ceil(n / batch)."""
    cfg = TrainingConfig(batch_size=batch_size, gradient_accumulation_steps=accumulation, packing=packing)
    batches = micro_batches(long_tail(n, seed=n), cfg, prompt_learning=False)
    assert len(batches) == math.ceil(n / batch_size)
    assert [len(b) for b in batches] == [len(b) for b in batch_indices(long_tail(n, seed=n), batch_size)]
    assert plan_steps(len(batches), cfg)[0] == math.ceil(math.ceil(n / batch_size) / accumulation)


@pytest.mark.slow
def test_a_real_run_takes_as_many_steps_as_hf_trainer(tiny_model_dir, tmp_path):
    """Both trainers train one epoch for real, with gradient accumulation, and count their optimizer steps."""
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.train import train

    rows = long_tail(45, max_len=48, seed=3)
    trainer = hf_trainer(tiny_model_dir, tmp_path, rows, 4, 2, learning_rate=1e-4)
    trainer.train()
    hf_steps = trainer.state.global_step
    assert hf_steps == math.ceil(math.ceil(45 / 4) / 2) == 6

    class Plans:
        def __init__(self) -> None:
            self.plans: list[dict] = []

        def plan(self, p: dict) -> None:
            self.plans.append(p)

        def progress(self, p: dict) -> None: ...

        def checkpoint(self, path: str) -> None: ...

    cfg = TrainingConfig(
        epochs=1, batch_size=4, gradient_accumulation_steps=2, max_seq_length=48, precision="fp32", logging_steps=100
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reporter = Plans()
    result = train(
        model, rows, [], cfg, pad_id=0, device="cpu", dtype=model.dtype, output_dir=tmp_path / "ours", reporter=reporter
    )
    assert result.steps == hf_steps
    (plan,) = reporter.plans  # reported once, before the first step
    assert plan["stepsPerEpoch"] == hf_steps and plan["examplesPerStep"] == 7.5  # 45 examples / 6 steps
