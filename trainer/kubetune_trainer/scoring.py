# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Post-training evaluation: test perplexity, greedy-generation accuracy on a golden set, and gates."""

from __future__ import annotations

import math
import re
from typing import Any

import torch


def normalize_answer(text: str) -> str:
    """Case, surrounding punctuation and whitespace do not count against an answer.

    >>> normalize_answer("  A canary   release. ")
    'a canary release'
    """
    return re.sub(r"\s+", " ", text).strip().strip(".!?,;:\"'").strip().casefold()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the reference after `normalize_answer`.

    >>> exact_match(["a b", "c"], ["A b.", "d"])
    0.5
    """
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / max(len(references), 1)


def contains(predictions: list[str], references: list[str]) -> float:
    """Share of answers that contain the reference.

    >>> contains(["it is a b c", "x"], ["b", "y"])
    0.5
    """
    hits = sum(normalize_answer(r) in normalize_answer(p) for p, r in zip(predictions, references, strict=True))
    return hits / max(len(references), 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # exp(50) is already "the model knows nothing"; avoid inf in JSON


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, device: str) -> list[str]:
    """Greedy answers, one prompt at a time (no padding to get wrong; golden sets are small)."""
    was_training = model.training
    model.eval()
    answers = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for prompt in prompts:
        ids = torch.tensor([bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    model.train(was_training)
    return answers


def apply_gates(metrics: dict[str, float], gates: Any) -> tuple[bool, list[str]]:
    """Compare tuned-model metrics with the spec's gates; return (passed, reasons for failing).

    >>> from kubetune_trainer.config import GatesConfig
    >>> apply_gates({"perplexity": 12.0, "exactMatch": 0.4}, GatesConfig(max_perplexity=10, min_exact_match=0.3))
    (False, ['perplexity 12 > maxPerplexity 10'])
    """
    failures = []
    checks = [
        ("perplexity", gates.max_perplexity, "maxPerplexity", lambda v, t: v <= t, ">"),
        ("evalLoss", gates.max_eval_loss, "maxEvalLoss", lambda v, t: v <= t, ">"),
        ("exactMatch", gates.min_exact_match, "minExactMatch", lambda v, t: v >= t, "<"),
        ("preferenceAccuracy", gates.min_preference_accuracy, "minPreferenceAccuracy", lambda v, t: v >= t, "<"),
    ]
    for metric, threshold, gate, ok, op in checks:
        if threshold is None:
            continue
        value = metrics.get(metric)
        if value is None or not ok(value, threshold):
            failures.append(
                f"{metric} {value:.4g} {op} {gate} {threshold:.4g}" if value is not None else f"{metric} missing"
            )
    return not failures, failures
