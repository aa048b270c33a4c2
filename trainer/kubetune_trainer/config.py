# ruff: noqa: RUF009  (_f and _sub return dataclasses.field(...) with help metadata; ruff cannot see that)
"""The FineTuneJob spec as typed dataclasses.

Parsing is strict for the sections the trainer owns: an unknown key, a wrong type or a contradiction
raises `ConfigError` naming the field (``spec.lora.alpha``), before any data or model is touched.
Top-level keys that belong to the operator (resources, image, schedule, ...) are ignored here; the CRD
validates them.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """The spec cannot be run; the message names the offending field."""


def _f(default: Any = None, help: str = "", **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        factory: Any = lambda d=default: type(d)(d)  # noqa: E731  (a fresh list/dict per instance)
        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _sub(cls: type, help: str = "") -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class SecretRef:
    name: str | None = _f(None, "Secret name.")
    key: str | None = _f(None, "Key inside the secret.")


@dataclass
class BaseModelConfig:
    name: str | None = _f(None, "Hugging Face hub id, e.g. meta-llama/Llama-3.2-1B.")
    uri: str | None = _f(None, "pvc://claim/path, s3://bucket/key or an absolute local path.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = _f(False, "Allow the model repo to run its own Python code.")
    token_secret_ref: SecretRef | None = _f(None, "Secret holding HF_TOKEN (read by the operator).")


@dataclass
class FieldsConfig:
    prompt: str = _f("prompt", "Column with the instruction (format instruction).")
    response: str = _f("response", "Column with the answer (format instruction).")
    messages: str = _f("messages", "Column with [{role, content}, ...] (format chat).")
    text: str = _f("text", "Column with raw text (format text).")
    system: str | None = _f(None, "Optional column with a system prompt (format instruction).")


@dataclass
class SplitConfig:
    validation: float = _f(0.1, "Fraction held out for validation loss / early stopping.")
    test: float = _f(0.1, "Fraction held out for the final perplexity and exact-match evaluation.")
    seed: int = _f(42, "Seed of the one-off shuffle that assigns rows to splits.")


@dataclass
class CleaningConfig:
    dedup: bool = _f(True, "Drop exact and whitespace/case-normalised duplicates.")
    normalize_whitespace: bool = _f(True, "Collapse runs of spaces/tabs and strip each field.")
    min_chars: int = _f(1, "Drop rows whose text is shorter than this.")
    max_chars: int | None = _f(None, "Drop rows whose text is longer than this.")
    drop_outliers: bool = _f(False, "Drop rows far longer than the rest (above Q3 + 3 IQR).")
    max_row_bytes: int = _f(
        8 << 20, "Drop (and count) rows longer than this many bytes, unread: a bound on memory per row."
    )


@dataclass
class MixConfig:
    uri: str | None = _f(None, "General-domain text mixed into the training split.")
    fraction: float = _f(0.0, "Share of the final training split that comes from the mix, in [0, 1).")


@dataclass
class DatasetConfig:
    uri: str | None = _f(None, "Local path, pvc://claim/path, s3://... or hf://org/name.", required=True)
    format: str = _f("instruction", "instruction | chat | text.", choices=("instruction", "chat", "text"))
    fields: FieldsConfig = _sub(FieldsConfig, "Column names.")
    split: SplitConfig = _sub(SplitConfig, "Train/validation/test fractions.")
    cleaning: CleaningConfig = _sub(CleaningConfig, "Row filters.")
    mix: MixConfig | None = _f(None, "Continued pre-training mix (format text only).")


@dataclass
class LoraConfig:
    r: int | None = _f(None, "Adapter rank; 16 when the lora section is absent.")
    alpha: float | None = _f(None, "Scaling numerator; 2 * r by default.")
    dropout: float = _f(0.05, "Dropout on the adapter input.")
    target_modules: list[str] = _f(["all-linear"], "Module names to adapt, or all-linear.")


@dataclass
class QuantizationConfig:
    bits: int = _f(4, "4 or 8.", choices=(4, 8))
    quant_type: str = _f("nf4", "nf4 | fp4.", choices=("nf4", "fp4"))
    double_quant: bool = _f(True, "Quantise the quantisation constants too.")
    compute_dtype: str = _f("bfloat16", "Dtype of the matmuls.", choices=("bfloat16", "float16", "float32"))


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = _f(16, "Learned virtual tokens (prefix / prompt).")


@dataclass
class EarlyStoppingConfig:
    patience: int = _f(0, "Evaluations without improvement before stopping; 0 turns it off.")
    min_delta: float = _f(0.0, "Smallest drop in validation loss that counts as an improvement.")


STRATEGIES = ("ddp", "fsdp")
# FSDP shards what sits inside the transformers model; prompt-learning parameters live outside it
# (they would never be synchronised), and 4-bit bitsandbytes weights need a quant-storage setup.
FSDP_METHODS = ("lora", "full", "ia3")


@dataclass
class DistributedConfig:
    strategy: str = _f(
        "ddp",
        "ddp: every process holds the whole model (data parallel); fsdp: weights, gradients and optimizer "
        "state are sharded across processes, for models that do not fit one GPU.",
        choices=STRATEGIES,
    )
    processes_per_node: int | None = _f(
        None, "Training processes in the pod; one per visible GPU by default (1 without a GPU)."
    )


@dataclass
class TrainingConfig:
    epochs: float = _f(1, "Passes over the training split (ignored when maxSteps is set).")
    max_steps: int | None = _f(None, "Optimizer steps; overrides epochs.")
    learning_rate: float = _f(2e-4, "Peak learning rate.")
    scheduler: str = _f(
        "linear", "Learning-rate schedule.", choices=("linear", "cosine", "constant", "constant_with_warmup")
    )
    warmup_ratio: float = _f(0.03, "Share of the steps spent warming up.")
    batch_size: int = _f(8, "Sequences (or packed rows) per micro-batch.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_seq_length: int = _f(1024, "Tokens per example (and per packed row).")
    packing: bool = _f(True, "Pack examples into rows; attention never crosses an example boundary.")
    precision: str = _f("auto", "auto | bf16 | fp16 | fp32.", choices=("auto", "bf16", "fp16", "fp32"))
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    early_stopping: EarlyStoppingConfig = _sub(
        EarlyStoppingConfig, "Stop when validation loss stalls; the weights of the best evaluation are exported."
    )
    seed: int = _f(42, "Seed for initialisation, dropout and batch order.")
    prompt_loss: bool = _f(False, "Also learn to predict the prompt tokens.")
    layerwise_lr_decay: float | None = _f(None, "Multiply the LR by this per layer going down, in (0, 1].")
    eval_steps: int = _f(50, "Validation loss every N steps.")
    logging_steps: int = _f(10, "Progress line and status patch every N steps.")
    checkpoint_steps: int = _f(100, "Checkpoint every N steps (and on SIGTERM).")
    distributed: DistributedConfig = _sub(DistributedConfig, "Several processes in the pod (torchrun).")


@dataclass
class GatesConfig:
    max_perplexity: float | None = _f(None, "Fail when test perplexity is above this.")
    min_exact_match: float | None = _f(None, "Fail when exact-match accuracy is below this.")
    max_eval_loss: float | None = _f(None, "Fail when test loss is above this.")


METRICS = ("perplexity", "exactMatch", "contains")


@dataclass
class EvaluationConfig:
    golden_dataset_uri: str | None = _f(None, "Instruction rows for exact match; the test split by default.")
    metrics: list[str] = _f(["perplexity", "exactMatch"], "Any of perplexity, exactMatch, contains.")
    gates: GatesConfig = _sub(GatesConfig, "Thresholds that decide evalPassed.")
    require_gates: bool = _f(
        True, "Without gates the run is not EvalPassed (NoGates); false passes an unevaluated model on purpose."
    )
    max_new_tokens: int = _f(32, "Greedy generation budget per golden prompt.")


@dataclass
class OutputConfig:
    uri: str | None = _f(None, "Local path, pvc://claim/path or s3://bucket/key.")
    merge_weights: bool = _f(False, "Also write the adapter merged into the base weights.")


METHODS = ("lora", "qlora", "full", "prefix", "prompt", "ia3")
# Spec keys the trainer reads; every other top-level key belongs to the operator.
_OWNED = {
    *("baseModel", "dataset", "method", "lora", "quantization"),
    *("promptTuning", "training", "evaluation", "output"),
}


@dataclass
class JobConfig:
    base_model: BaseModelConfig = _sub(BaseModelConfig, "Model to fine-tune.")
    dataset: DatasetConfig = _sub(DatasetConfig, "Training data.")
    method: str = _f("lora", "lora | qlora | full | prefix | prompt | ia3.", choices=METHODS)
    lora: LoraConfig = _sub(LoraConfig, "LoRA / QLoRA adapter.")
    quantization: QuantizationConfig = _sub(QuantizationConfig, "QLoRA base-model quantisation.")
    prompt_tuning: PromptTuningConfig = _sub(PromptTuningConfig, "Prefix / prompt tuning.")
    training: TrainingConfig = _sub(TrainingConfig, "Optimisation.")
    evaluation: EvaluationConfig = _sub(EvaluationConfig, "Post-training evaluation and gates.")
    output: OutputConfig = _sub(OutputConfig, "Where the artifact goes.")
    name: str = _f("local", "FineTuneJob metadata.name.")
    namespace: str | None = _f(None, "FineTuneJob metadata.namespace.")
    uid: str | None = _f(None, "FineTuneJob metadata.uid: whose run this is (checkpoints carry it).")


def camel(name: str) -> str:
    """``max_seq_length`` -> ``maxSeqLength``."""
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def snake(name: str) -> str:
    """``maxSeqLength`` -> ``max_seq_length``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} at {path}")  # a bug in this module, not in the spec


def _build(cls: Any, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {camel(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, f in known.items():
        sub = f"{path}.{key}"
        if key not in data:
            if f.metadata.get("required"):
                raise ConfigError(f"{sub}: required")
            continue
        value = _coerce(data[key], hints[f.name], sub)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{sub}: {value!r} is not one of {', '.join(map(str, choices))}")
        kwargs[f.name] = value
    return cls(**kwargs)


def parse_job(obj: dict[str, Any], cuda_available: bool | None = None) -> JobConfig:
    """Parse a whole FineTuneJob object (apiVersion, kind, metadata, spec) into a `JobConfig`.

    ``cuda_available`` is injectable for tests; by default torch is asked (only when it matters).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("spec"), dict):
        raise ConfigError("spec: the file must hold a FineTuneJob object with a 'spec' mapping")
    if obj.get("kind", "FineTuneJob") != "FineTuneJob":
        raise ConfigError(f"kind: expected FineTuneJob, got {obj.get('kind')!r}")
    spec = obj["spec"]
    if "dataset" not in spec:
        raise ConfigError("spec.dataset: required")
    cfg: JobConfig = _build(JobConfig, {k: v for k, v in spec.items() if k in _OWNED}, "spec")
    meta = obj.get("metadata") or {}
    cfg.name = str(meta.get("name") or "local")
    cfg.namespace = meta.get("namespace")
    cfg.uid = meta.get("uid")
    # "lora section absent" and "lora: {}" both mean the defaults; alpha alone is ambiguous.
    lora_spec = spec.get("lora") or {}
    if "alpha" in lora_spec and "r" not in lora_spec:
        raise ConfigError("spec.lora.alpha: set spec.lora.r too (alpha only makes sense relative to a rank)")
    validate(cfg, set(spec), cuda_available)
    return cfg


def validate(cfg: JobConfig, present: set[str], cuda_available: bool | None = None) -> None:
    """Cross-field checks. ``present`` is the set of top-level spec keys the user wrote."""
    b, d, t, m = cfg.base_model, cfg.dataset, cfg.training, cfg.method
    if (b.name is None) == (b.uri is None):
        raise ConfigError("spec.baseModel: set exactly one of name or uri")
    for key, value in (("validation", d.split.validation), ("test", d.split.test)):
        if not 0 <= value < 1:
            raise ConfigError(f"spec.dataset.split.{key}: {value} is outside [0, 1)")
    if d.split.validation + d.split.test >= 1:
        raise ConfigError("spec.dataset.split: validation + test must leave rows for training")
    c = d.cleaning
    if c.min_chars < 0:
        raise ConfigError("spec.dataset.cleaning.minChars: must be >= 0")
    if c.max_chars is not None and c.max_chars < max(c.min_chars, 1):
        raise ConfigError("spec.dataset.cleaning.maxChars: must be >= minChars and >= 1")
    if c.max_row_bytes < 1:
        raise ConfigError("spec.dataset.cleaning.maxRowBytes: must be >= 1")
    if d.mix is not None:
        if d.mix.uri is None:
            raise ConfigError("spec.dataset.mix.uri: required when mix is set")
        if not 0 < d.mix.fraction < 1:
            raise ConfigError(f"spec.dataset.mix.fraction: {d.mix.fraction} is outside (0, 1)")
        if d.format != "text":
            raise ConfigError("spec.dataset.mix: only for format text (continued pre-training)")
    if "lora" in present and m not in ("lora", "qlora"):
        raise ConfigError(f"spec.lora: set, but method is {m} (lora applies to lora and qlora only)")
    if "quantization" in present and m != "qlora":
        raise ConfigError(f"spec.quantization: set, but method is {m} (quantization is for qlora)")
    if "promptTuning" in present and m not in ("prefix", "prompt"):
        raise ConfigError(f"spec.promptTuning: set, but method is {m} (it applies to prefix and prompt)")
    lo = cfg.lora
    if lo.r is None:
        lo.r = 16
    if lo.r < 1:
        raise ConfigError(f"spec.lora.r: {lo.r} must be >= 1")
    if lo.alpha is None:
        lo.alpha = 2.0 * lo.r
    if not 0 <= lo.dropout < 1:
        raise ConfigError(f"spec.lora.dropout: {lo.dropout} is outside [0, 1)")
    if not lo.target_modules:
        raise ConfigError("spec.lora.targetModules: must name at least one module")
    if cfg.prompt_tuning.num_virtual_tokens < 1:
        raise ConfigError("spec.promptTuning.numVirtualTokens: must be >= 1")
    _validate_training(t)
    ev = cfg.evaluation
    for metric in ev.metrics:
        if metric not in METRICS:
            raise ConfigError(f"spec.evaluation.metrics: {metric!r} is not one of {', '.join(METRICS)}")
    g = ev.gates
    if g.max_perplexity is not None and "perplexity" not in ev.metrics:
        raise ConfigError("spec.evaluation.gates.maxPerplexity: add perplexity to spec.evaluation.metrics")
    if g.min_exact_match is not None and "exactMatch" not in ev.metrics:
        raise ConfigError("spec.evaluation.gates.minExactMatch: add exactMatch to spec.evaluation.metrics")
    if ev.max_new_tokens < 1:
        raise ConfigError("spec.evaluation.maxNewTokens: must be >= 1")
    if cfg.output.merge_weights and m in ("prefix", "prompt"):
        raise ConfigError(f"spec.output.mergeWeights: {m} tuning adds virtual tokens and cannot be merged")
    if t.distributed.strategy == "fsdp":
        if m not in FSDP_METHODS:
            raise ConfigError(
                f"spec.training.distributed.strategy: fsdp supports method {', '.join(FSDP_METHODS)}, not {m} "
                "(use strategy ddp)"
            )
        if cfg.output.merge_weights:
            raise ConfigError(
                "spec.output.mergeWeights: not available with training.distributed.strategy fsdp "
                "(the weights are sharded; merge the adapter afterwards)"
            )
    needs_cuda = m == "qlora" or t.precision == "fp16"
    if needs_cuda:
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            what = "spec.method: qlora" if m == "qlora" else "spec.training.precision: fp16"
            raise ConfigError(
                f"{what} needs a CUDA GPU (bitsandbytes 4/8-bit kernels / fp16 autocast); none is visible. "
                "Use method lora (or precision bf16/fp32) on CPU, or request a GPU in spec.resources."
            )


def _validate_training(t: TrainingConfig) -> None:
    p = "spec.training"
    positive = {
        "batchSize": t.batch_size,
        "gradientAccumulationSteps": t.gradient_accumulation_steps,
        "maxSeqLength": t.max_seq_length,
        "evalSteps": t.eval_steps,
        "loggingSteps": t.logging_steps,
        "checkpointSteps": t.checkpoint_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{p}.{key}: {value} must be >= 1")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"{p}.maxSteps: {t.max_steps} must be >= 1")
    if t.epochs <= 0:
        raise ConfigError(f"{p}.epochs: {t.epochs} must be > 0")
    if t.learning_rate <= 0:
        raise ConfigError(f"{p}.learningRate: {t.learning_rate} must be > 0")
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"{p}.warmupRatio: {t.warmup_ratio} is outside [0, 1)")
    if t.layerwise_lr_decay is not None and not 0 < t.layerwise_lr_decay <= 1:
        raise ConfigError(f"{p}.layerwiseLrDecay: {t.layerwise_lr_decay} is outside (0, 1]")
    n = t.distributed.processes_per_node
    if n is not None and not 1 <= n <= 64:
        raise ConfigError(f"{p}.distributed.processesPerNode: {n} is outside [1, 64]")
    if t.early_stopping.patience < 0:
        raise ConfigError(f"{p}.earlyStopping.patience: must be >= 0")
    if t.early_stopping.min_delta < 0:
        raise ConfigError(f"{p}.earlyStopping.minDelta: must be >= 0")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready camelCase view (used in the model card)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[camel(f.name)] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out
