"""The glue steps `recipe.run` calls between modules: tokenise the splits, evaluate a model, build the card."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune_trainer import preference, scoring
from kubetune_trainer.config import JobConfig, to_dict
from kubetune_trainer.export import library_versions, write_json
from kubetune_trainer.formatting import to_pair
from kubetune_trainer.loss import mean_loss
from kubetune_trainer.model import attn_implementation, uses_prompt_learning
from kubetune_trainer.packing import tokenize_pair
from kubetune_trainer.splits import PreparedData
from kubetune_trainer.train import TrainResult, autocast_factory

log = logging.getLogger("kubetune_trainer")


@dataclass
class TokenizedData:
    train: list[dict[str, list[int]]]  # one example per row; train.micro_batches groups them
    validation: list[dict[str, list[int]]]
    test: list[dict[str, list[int]]]
    golden: list[tuple[str, str]]  # (prompt, expected answer) for generation
    dropped: int  # examples where not even one response token fit in maxSeqLength
    varlen: bool = False  # packing: one padding-free row per micro-batch (see packing.py)


def tokenize_splits(
    prepared: PreparedData, cfg: JobConfig, tokenizer: Any, device: str, cache_dir: Path | None = None
) -> TokenizedData:
    """``device`` (the one this process trains on) decides how packing lays out the rows.

    With ``cache_dir`` the token ids are written there once (next to the splits) and read back by a
    resumed run or the other torchrun ranks, keyed by everything that decides them.
    """
    d, t = cfg.dataset, cfg.training
    examples = _tokenized_examples(prepared, cfg, tokenizer, cache_dir)
    train, dropped = examples["train"], examples["dropped"]
    if not train:
        from kubetune_trainer.sources import DataError

        raise DataError(f"no training example fits in maxSeqLength {t.max_seq_length} tokens")
    packed = t.packing and not uses_prompt_learning(cfg.method) and d.format != "preference"
    # Packed: each micro-batch is one padding-free row; flash-attn's varlen kernel or, without it,
    # per-example sdpa (packed_attention.py) keeps attention inside each example.
    if packed:
        kernel = "flash-attn varlen" if attn_implementation(device) == "flash_attention_2" else "per-example sdpa"
        log.info(
            "%d examples, micro-batches of batchSize random examples in one row, no padding (%s)", len(train), kernel
        )
    # Validation/test rows stay one example per row: their loss is the same either way.
    golden_rows, golden_fmt = (
        (prepared.golden, "instruction") if prepared.golden else (prepared.splits["test"], d.format)
    )
    golden = [] if golden_fmt == "text" else [to_pair(r, golden_fmt, d.fields, tokenizer) for r in golden_rows]
    return TokenizedData(train, examples["validation"], examples["test"], golden, dropped, packed)


def tokenization_key(prepared: PreparedData, cfg: JobConfig, tokenizer: Any) -> str:
    """A digest of what decides the token ids: split rows, tokenizer, template, length and loss settings."""
    d, t = cfg.dataset, cfg.training
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256()
    for part in (
        json.dumps({k: prepared.splits[k] for k in ("train", "validation", "test")}, sort_keys=True, default=str),
        backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True),
        str(getattr(tokenizer, "chat_template", None)),
        json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, d.format, to_dict(d.fields)]),
        json.dumps([t.max_seq_length, t.prompt_loss]),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _tokenized_examples(
    prepared: PreparedData, cfg: JobConfig, tokenizer: Any, cache_dir: Path | None
) -> dict[str, Any]:
    """{"train", "validation", "test": examples, "dropped": count}, from the cache when it has them."""
    d, t = cfg.dataset, cfg.training
    path = cache_dir / f"tokenized-{tokenization_key(prepared, cfg, tokenizer)}.json" if cache_dir else None
    if path is not None and path.exists():
        log.info("token ids from %s", path)
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    dropped = 0

    def tokenize(rows: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
        nonlocal dropped
        out = []
        for row in rows:
            if d.format == "preference":
                ex = preference.tokenize_preference(row, d.fields, tokenizer, t.max_seq_length)
            else:
                prompt, response = to_pair(row, d.format, d.fields, tokenizer)
                ex = tokenize_pair(prompt, response, tokenizer, t.max_seq_length, t.prompt_loss or d.format == "text")
            if ex is None:
                dropped += 1
            else:
                out.append(ex)
        return out

    examples: dict[str, Any] = {k: tokenize(prepared.splits[k]) for k in ("train", "validation", "test")}
    examples["dropped"] = dropped
    if path is not None:
        write_json(path, examples, compact=True)
    return examples


def storage_dtype(cfg: JobConfig, device: str, compute: torch.dtype) -> torch.dtype:
    """Frozen base weights may live in the ``compute`` dtype on GPU; trained weights stay fp32."""
    return compute if device.startswith("cuda") and cfg.policy_method != "full" else torch.float32


def evaluate(
    model: Any,
    tokenizer: Any,
    data: TokenizedData,
    cfg: JobConfig,
    device: str,
    dtype: torch.dtype,
    prompt_learning: bool,
    samples: list[dict[str, str]] | None = None,
    objective: preference.PreferenceObjective | None = None,
    answers_out: list[str] | None = None,
) -> dict[str, float]:
    """Test-split loss/perplexity and golden-set accuracy, as the spec's metrics list asks, computed in
    ``dtype`` (the compute dtype) on ``device``. Preference pairs: loss and perplexity of the chosen
    responses, and preferenceAccuracy (+ rewardMargin, given the run's ``objective``: its reference).

    ``samples``, when given, receives the first few (prompt, expected, predicted) for eval.json;
    ``answers_out`` every generated answer, in golden-set order (what spec.evaluation.judge compares).
    spec.evaluation.checks' rates are metrics['check.<name>'].
    """
    t, ev = cfg.training, cfg.evaluation
    autocast = autocast_factory(device, dtype)
    metrics: dict[str, float] = {}
    rows = data.test or data.validation
    if rows:
        loss = mean_loss(model, rows, t.batch_size, tokenizer.pad_token_id, device, autocast, prompt_learning)
        metrics["evalLoss"] = round(loss, 6)
        if "perplexity" in ev.metrics:
            metrics["perplexity"] = round(scoring.perplexity(loss), 6)
        if cfg.dataset.format == "preference":
            pad, beta = tokenizer.pad_token_id, cfg.preference.beta
            metrics.update(preference.evaluate(model, rows, t.batch_size, pad, device, autocast, objective, beta))
    # The judge alone needs only its first maxPrompts answers; the metrics and checks need all of them.
    everything = bool({"exactMatch", "contains"} & set(ev.metrics) or ev.checks)
    wanted = None if everything else (ev.judge.max_prompts if ev.judge and answers_out is not None else 0)
    if data.golden and wanted != 0:
        prompts = [p for p, _ in data.golden][:wanted]
        answers = [a for _, a in data.golden][:wanted]
        with autocast():
            predictions = scoring.generate(model, tokenizer, prompts, ev.max_new_tokens, device)
        if "exactMatch" in ev.metrics:
            metrics["exactMatch"] = round(scoring.exact_match(predictions, answers), 6)
        if "contains" in ev.metrics:
            metrics["contains"] = round(scoring.contains(predictions, answers), 6)
        if ev.checks:
            metrics.update(scoring.check_rates(ev.checks, predictions, answers))
        if answers_out is not None:
            answers_out.extend(predictions)
        log.info("sample answer: %r -> %r (expected %r)", prompts[0][-60:], predictions[0], answers[0])
        if samples is not None:
            samples.extend(
                {"prompt": p, "expected": a, "predicted": y}
                for p, a, y in list(zip(prompts, answers, predictions, strict=True))[:20]
            )
    return metrics


def gates(
    metrics: dict[str, float], cfg: JobConfig, judged: dict[str, Any] | None = None
) -> tuple[bool | None, list[str]]:
    """(evalPassed, why not). None when the spec has no gates: nothing checked the model, so it is not
    a pass (the operator shows EvalPassed Unknown, NoGates), unless ``evaluation.requireGates`` is false.
    A configured judge that could not judge (``judged`` has an error) fails the run whatever the gates say."""
    ev = cfg.evaluation
    if not ev.any_gate():
        passed: bool | None = None if ev.require_gates else True
        reasons: list[str] = []
    else:
        passed, reasons = scoring.apply_gates(metrics, ev.gates, ev.checks)
    if judged and judged.get("error"):
        return False, [*reasons, f"JudgeUnavailable: {judged['error']}"]
    return passed, reasons


def judge(
    cfg: JobConfig,
    golden: list[tuple[str, str]],
    tuned: list[str],
    baseline: list[str],
    url: str | None,
    api_key: str | None,
) -> dict[str, Any]:
    """spec.evaluation.judge on the first maxPrompts golden prompts: status.judge's block (`kubetune_trainer.judge`).

    ``url``: the spec's, else the one the operator resolved spec.evaluation.judge.modelDeploymentRef to."""
    from kubetune_trainer import judge as judging

    j = cfg.evaluation.judge
    assert j is not None
    target = j.url or url
    if not target:
        return {"judged": 0, "error": "spec.evaluation.judge.modelDeploymentRef: no judge URL was resolved"}
    endpoint = judging.Endpoint(target, j.rubric, j.model, api_key, float(j.timeout_seconds), j.retries)
    n = min(j.max_prompts, len(golden), len(tuned), len(baseline))
    items: list[tuple[str, str | None, str, str]] = [
        (p, ref, tuned[i], baseline[i]) for i, (p, ref) in enumerate(golden[:n])
    ]
    return judging.run(endpoint, items)


def lineage(data_info: dict[str, Any], init: dict[str, Any] | None) -> dict[str, Any]:
    """Where this run's weights and data came from, for the model card and result.json (which the operator
    mirrors into status.lineage): the spec.initFrom artifact (`init_from.record`) and the data's hashes.

    >>> lineage({"sourceUri": "/d.jsonl", "sourceSha256": "ab"}, None)
    {'initFrom': None, 'datasetUri': '/d.jsonl', 'datasetSha256': 'ab'}
    """
    out: dict[str, Any] = {
        "initFrom": init,
        "datasetUri": data_info.get("sourceUri"),
        "datasetSha256": data_info.get("sourceSha256"),
    }
    if data_info.get("mixSha256"):
        out.update(mixUri=data_info["mixUri"], mixSha256=data_info["mixSha256"])
    return out


def model_card(
    cfg: JobConfig,
    data_info: dict[str, Any],
    base_metrics: dict[str, float],
    metrics: dict[str, float],
    result: TrainResult,
    passed: bool | None,
    started: float,
    run: str | None,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lineage: where the model and data came from, how it was trained, and how it scored.

    ``run``: the operator's run number (`TrainerEnv.run`), None for a local run. ``lineage``: `lineage`'s
    record (the spec.initFrom artifact, the data's hashes).
    """
    spec = to_dict(cfg)
    return {
        "finetuneJob": {"name": cfg.name, "namespace": cfg.namespace, "run": run},
        "baseModel": spec["baseModel"],
        "dataset": {
            "uri": cfg.dataset.uri or data_info.get("sourceUri"),
            "sha256": data_info["sourceSha256"],
            "format": cfg.dataset.format,
            "splitSeed": cfg.dataset.split.seed,
            "counts": data_info["counts"],
            "cleaning": data_info["cleaning"],
        },
        "method": cfg.method,
        "hyperparameters": {
            "training": spec["training"],
            **({"lora": spec["lora"]} if cfg.policy_method in ("lora", "qlora") else {}),
            **({"preference": spec["preference"]} if cfg.dataset.format == "preference" else {}),
            **({"quantization": spec["quantization"]} if cfg.method == "qlora" else {}),
            **({"promptTuning": spec["promptTuning"]} if uses_prompt_learning(cfg.method) else {}),
        },
        "training": {
            "steps": result.steps,
            "finalTrainLoss": result.train_loss,
            "bestEvalLoss": result.best_eval_loss,
            "stoppedEarly": result.stopped_early,
            "weightsFromStep": result.best_step or result.steps,
            "resumedFrom": result.resumed_from,
        },
        "metrics": {"base": base_metrics, "tuned": metrics},
        "evalPassed": passed,
        "lineage": lineage,
        "libraries": library_versions(),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "durationSeconds": round(time.time() - started, 1),
    }
