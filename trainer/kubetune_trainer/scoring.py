# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Post-training evaluation: test perplexity, greedy-generation accuracy on a golden set, and gates."""

from __future__ import annotations

import json
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


def passes(check: Any, prediction: str, reference: str) -> bool:
    """Whether one answer passes one spec.evaluation.checks entry (jsonValid, regex, exactMatch, contains).

    >>> from kubetune_api.evaluation import Check
    >>> passes(Check(name="j", type="jsonValid"), ' {"a": 1} ', ""), passes(Check(name="j", type="jsonValid"), "{", "")
    (True, False)
    >>> passes(Check(name="r", type="regex", pattern="T-[0-9]+"), "see T-12", "")
    True
    >>> passes(Check(name="c", type="contains"), "a B c", "b"), passes(Check(name="e", type="exactMatch"), "B.", "b")
    (True, True)
    """
    if check.type == "jsonValid":
        try:
            json.loads(prediction)
        except ValueError:
            return False
        return True
    if check.type == "regex":
        return re.search(check.pattern, prediction) is not None
    if check.type == "exactMatch":
        return normalize_answer(prediction) == normalize_answer(reference)
    needle = check.pattern if check.pattern is not None else reference
    return normalize_answer(needle) in normalize_answer(prediction)


def check_rates(checks: list[Any], predictions: list[str], references: list[str]) -> dict[str, float]:
    """metrics['check.<name>']: the share of answers that pass each check.

    >>> from kubetune_api.evaluation import Check
    >>> check_rates([Check(name="json", type="jsonValid")], ["{}", "no", "[1]", "{"], ["", "", "", ""])
    {'check.json': 0.5}
    """
    pairs = list(zip(predictions, references, strict=True))
    return {f"check.{c.name}": round(sum(passes(c, p, r) for p, r in pairs) / max(len(pairs), 1), 6) for c in checks}


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


def apply_gates(metrics: dict[str, float], gates: Any, checks: list[Any] | None = None) -> tuple[bool, list[str]]:
    """Compare tuned-model metrics with the spec's gates and the checks' mins; return (passed, reasons for failing).

    >>> from kubetune_trainer.config import GatesConfig
    >>> apply_gates({"perplexity": 12.0, "exactMatch": 0.4}, GatesConfig(max_perplexity=10, min_exact_match=0.3))
    (False, ['perplexity 12 > maxPerplexity 10'])
    """
    failures = []
    rules: list[tuple[str, float | None, str, Any, str]] = [
        ("perplexity", gates.max_perplexity, "maxPerplexity", lambda v, t: v <= t, ">"),
        ("evalLoss", gates.max_eval_loss, "maxEvalLoss", lambda v, t: v <= t, ">"),
        ("exactMatch", gates.min_exact_match, "minExactMatch", lambda v, t: v >= t, "<"),
        ("preferenceAccuracy", gates.min_preference_accuracy, "minPreferenceAccuracy", lambda v, t: v >= t, "<"),
        ("judgeWinRate", gates.min_judge_win_rate, "minJudgeWinRate", lambda v, t: v >= t, "<"),
    ]
    rules += [
        (f"check.{c.name}", c.min, f"checks[{c.name}].min", lambda v, t: v >= t, "<")
        for c in checks or []
        if c.min is not None
    ]
    for metric, threshold, gate, ok, op in rules:
        if threshold is None:
            continue
        value = metrics.get(metric)
        if value is None or not ok(value, threshold):
            failures.append(
                f"{metric} {value:.4g} {op} {gate} {threshold:.4g}" if value is not None else f"{metric} missing"
            )
    return not failures, failures
