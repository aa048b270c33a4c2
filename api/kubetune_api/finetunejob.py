"""The FineTuneJob spec: fine-tune a base model on a domain dataset; the operator runs it as a batch/v1 Job.

Room: the API package. This module is the single source of the FineTuneJob API: the CRD schema
(hack/gen_crds.py), the API reference, the operator's and the trainer's parsers all come from it.
Defaults are written here once; `no_schema_default` marks the few the CRD must not store. The larger
sections live beside it: dataset.py, evaluation.py and stages.py (merge, initFrom).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune_api.common import (
    INPUT_LOCATION,
    LOCATION,
    EnvFromSource,
    InClaim,
    MaybeImage,
    MaybeInClaim,
    SecretKeyRef,
    TrainerResources,
)
from kubetune_api.dataset import Dataset
from kubetune_api.evaluation import Evaluation
from kubetune_api.rules import ApiModel, Rule, has, no_schema_default
from kubetune_api.stages import InitFrom, Merge
from kubetune_api.tracking import Tracking

Method = Literal["lora", "qlora", "full", "prefix", "prompt", "ia3", "dpo", "orpo", "merge"]
# FSDP shards what sits inside the transformers model; prompt-learning parameters live outside it
# (they would never be synchronised), and 4-bit bitsandbytes weights need a quant-storage setup.
FSDP_METHODS = ("lora", "full", "ia3")
PROMPT_LEARNING = ("prefix", "prompt")
PREFERENCE = ("dpo", "orpo")  # preference tuning: (prompt, chosen, rejected) pairs, spec.preference


class BaseModelSource(ApiModel):
    rules = (
        Rule(
            "has(self.name) != has(self.uri)",
            "baseModel needs exactly one of name (hub id) or uri, not both and not neither",
            lambda s: has(s, "name") != has(s, "uri"),
        ),
    )
    name: str | None = Field(
        None,
        max_length=256,
        pattern="^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
        description="Hugging Face hub id, e.g. meta-llama/Llama-3.2-1B.",
    )
    uri: MaybeInClaim = Field(
        None,
        max_length=1024,
        pattern=INPUT_LOCATION,
        description=("pvc://claim/path, s3://bucket/key, hf://org/name or an absolute path inside the trainer image."),
    )
    revision: str | None = Field(None, max_length=128, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub to run; off unless you trust the source."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding an access token; passed to the pod by reference only."
    )


class Lora(ApiModel):
    rules = (
        Rule(
            "!has(self.alpha) || has(self.r)",
            "lora.alpha requires lora.r (alpha scales r; when both are absent r=16, alpha=2r)",
            lambda s: not has(s, "alpha") or has(s, "r"),
        ),
    )
    r: int = Field(16, ge=1, le=1024, description="Rank (16 when unset).", json_schema_extra=no_schema_default)
    alpha: float | None = Field(None, gt=0, description="Scaling (2*r when unset).")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        json_schema_extra={"default": ["all-linear"]},
    )

    @property
    def scaling(self) -> float:
        """alpha, or 2 * r when unset."""
        return self.alpha if self.alpha is not None else 2.0 * self.r


class Preference(ApiModel):
    """Preference tuning (method dpo or orpo); defaults as in trl and LLaMA-Factory."""

    rules = (
        Rule(
            "!has(self.labelSmoothing) || self.labelSmoothing == 0.0"
            " || (has(self.lossType) ? self.lossType : 'sigmoid') == 'sigmoid'",
            "preference.labelSmoothing is only valid with preference.lossType sigmoid",
            lambda s: s.label_smoothing == 0 or s.loss_type == "sigmoid",
        ),
    )
    beta: float = Field(0.1, gt=0, description="dpo: how far the policy may move from the reference (the KL weight).")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="dpo: sigmoid (the DPO paper), ipo (length-averaged, squared) or hinge (SLiC)."
    )
    label_smoothing: float = Field(
        0, ge=0, le=0.5, description="dpo sigmoid: the assumed share of flipped labels (conservative DPO)."
    )
    orpo_lambda: float = Field(0.1, gt=0, description="orpo: the weight of the odds-ratio term beside the NLL.")
    policy: Literal["lora", "full"] = Field(
        "lora",
        description=(
            "lora: the policy is a LoRA adapter (spec.lora), the reference is the base with the adapter off, "
            "so no second copy is held; full: every weight trains, beside a frozen reference copy (dpo)."
        ),
    )


class Quantization(ApiModel):
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class PromptTuning(ApiModel):
    num_virtual_tokens: int = Field(16, ge=1, le=1024)


class EarlyStopping(ApiModel):
    patience: int = Field(0, ge=0, description="Evaluations without improvement before stopping; 0 is off.")
    min_delta: float = Field(0, ge=0)


class Distributed(ApiModel):
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "ddp replicates the model on every GPU; fsdp shards weights, gradients and optimizer state across "
            "them, for models that do not fit one GPU."
        ),
    )
    processes_per_node: int | None = Field(
        None, ge=1, le=64, description="Training processes per node; one per GPU when unset (1 without a GPU)."
    )
    # Multi-node (spec.resources.nodes > 1): how the gang runs and finds itself.
    engine: Literal["indexedJob", "jobSet", "trainJob"] | None = Field(
        None,
        description=(
            "With resources.nodes > 1, what runs the gang: an Indexed Job plus a headless Service (indexedJob), a "
            "JobSet (jobSet) or a Kubeflow TrainJob (trainJob), when the cluster has those CRDs. Unset: the "
            "operator's default (KUBETUNE_TRAINING_ENGINE, chart value operator.trainingEngine; indexedJob)."
        ),
    )
    backend: Literal["nccl", "gloo"] | None = Field(
        None,
        description=(
            "The process-group backend: nccl with GPUs, gloo without when unset. resources.nodes > 1 without GPUs "
            "needs gloo written here (CPU gangs are for tests)."
        ),
    )
    rendezvous_port: int = Field(
        29500, ge=1024, le=65535, description="torchrun's static rendezvous port on node 0 (multi-node)."
    )
    socket_interface: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:,^-]+$",
        description=(
            "The network interface(s) NCCL and gloo use between nodes (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), "
            "e.g. eth0; unset lets them pick."
        ),
    )


class Training(ApiModel):
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training split (ignored with maxSteps).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    learning_rate: float = Field(2e-4, gt=0, le=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description=(
            "Examples per micro-batch of each training process, as HF Trainer's per_device_train_batch_size: an "
            "optimizer step takes batchSize x gradientAccumulationSteps x processes examples, and an epoch "
            "ceil(ceil(train examples / batchSize) / (gradientAccumulationSteps x processes)) steps (the last "
            "micro-batch of an epoch may hold fewer). status.progress shows examplesPerStep, tokensPerStep and "
            "stepsPerEpoch before the first step."
        ),
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_seq_length: int = Field(
        1024,
        ge=16,
        le=1 << 20,
        description="Tokens per example: longer ones are cut to it (dropped when the prompt alone fills it).",
    )
    packing: bool = Field(
        True,
        description=(
            "Each micro-batch is batchSize examples drawn at random laid out as one row with no padding, "
            "without cross-example attention (flash-attn's varlen kernel on GPU, one sdpa call per example "
            "elsewhere). Off: batchSize examples of similar length per micro-batch, right-padded."
        ),
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping,
        description="Stop when validation loss stalls; the weights of the best evaluation are the result.",
    )
    seed: int = Field(42, ge=0)
    prompt_loss: bool = Field(False, description="Include prompt tokens in the loss.")
    layerwise_lr_decay: float | None = Field(None, gt=0, le=1)
    eval_steps: int = Field(50, ge=1)
    logging_steps: int = Field(10, ge=1)
    checkpoint_steps: int = Field(100, ge=1)
    distributed: Distributed = Field(
        default_factory=Distributed,
        description="Several training processes in the pod (torchrun). Without this section: one per GPU, with ddp.",
    )


class Output(ApiModel):
    uri: InClaim = Field(
        max_length=1024,
        pattern=LOCATION,
        description=(
            "Where the adapter goes (pvc://claim/path, s3://bucket/prefix or an absolute path); each run writes "
            "run-N/ under it."
        ),
    )
    merge_weights: bool = Field(False, description="Also write base+adapter merged weights.")


_TRAINING_ONLY = ("max_steps", "distributed", "layerwise_lr_decay")  # what method merge must not set


def _fsdp(s: FineTuneJobSpec) -> bool:
    return has(s.training, "distributed") and s.training.distributed.strategy == "fsdp"


class FineTuneJobSpec(ApiModel):
    rules = (
        Rule(
            "self.method != 'qlora' || has(self.quantization)",
            "method qlora requires spec.quantization (e.g. {bits: 4, quantType: nf4})",
            lambda s: s.method != "qlora" or has(s, "quantization"),
        ),
        Rule(
            "!has(self.quantization) || self.method == 'qlora'",
            "spec.quantization is only valid with method qlora",
            lambda s: not has(s, "quantization") or s.method == "qlora",
        ),
        Rule(
            "self.method != 'qlora' || self.resources.gpus >= 1",
            "method qlora quantizes with bitsandbytes on CUDA: spec.resources.gpus must be at least 1",
            lambda s: s.method != "qlora" or s.resources.gpus >= 1,
        ),
        Rule(
            "!has(self.lora) || self.method in ['lora', 'qlora'] || (self.method in ['dpo', 'orpo']"
            " && (!has(self.preference) || !has(self.preference.policy) || self.preference.policy == 'lora'))",
            "spec.lora is only valid with method lora or qlora (or dpo/orpo with preference.policy lora)",
            lambda s: not has(s, "lora") or s.policy_method in ("lora", "qlora"),
        ),
        # Preference tuning (dpo, orpo): its own block of rules.
        Rule(
            "!(self.method in ['dpo', 'orpo']) || self.dataset.format == 'preference'",
            "method dpo and orpo train on pairs: spec.dataset.format must be preference",
            lambda s: s.method not in PREFERENCE or s.dataset.format == "preference",
        ),
        Rule(
            "self.dataset.format != 'preference' || self.method in ['dpo', 'orpo']",
            "spec.dataset.format preference is only valid with method dpo or orpo",
            lambda s: s.dataset.format != "preference" or s.method in PREFERENCE,
        ),
        Rule(
            "!has(self.preference) || self.method in ['dpo', 'orpo']",
            "spec.preference is only valid with method dpo or orpo",
            lambda s: not has(s, "preference") or s.method in PREFERENCE,
        ),
        Rule(
            "!has(self.evaluation) || !has(self.evaluation.metrics)"
            " || !('preferenceAccuracy' in self.evaluation.metrics) || self.method in ['dpo', 'orpo']",
            "evaluation.metrics preferenceAccuracy is only valid with method dpo or orpo",
            lambda s: "preferenceAccuracy" not in s.evaluation.metrics or s.method in PREFERENCE,
        ),
        Rule(
            "!has(self.promptTuning) || self.method in ['prefix', 'prompt']",
            "spec.promptTuning is only valid with method prefix or prompt",
            lambda s: not has(s, "prompt_tuning") or s.method in PROMPT_LEARNING,
        ),
        Rule(
            "!has(self.dataset.mix) || self.dataset.format == 'text'",
            "spec.dataset.mix (general-data mixing) is only valid with dataset.format text",
            lambda s: s.dataset.mix is None or s.dataset.format == "text",
        ),
        Rule(
            "!self.output.mergeWeights || !(self.method in ['prefix', 'prompt'])",
            "spec.output.mergeWeights is not available with method prefix or prompt (virtual tokens cannot be merged)",
            lambda s: not s.output.merge_weights or s.method not in PROMPT_LEARNING,
        ),
        Rule(
            "!has(self.training.distributed) || self.training.distributed.strategy != 'fsdp'"
            " || self.method in ['lora', 'full', 'ia3']",
            "training.distributed.strategy fsdp supports method lora, full or ia3 (use ddp for qlora, prefix, prompt)",
            lambda s: not _fsdp(s) or s.method in FSDP_METHODS,
        ),
        Rule(
            "!has(self.training.distributed) || self.training.distributed.strategy != 'fsdp'"
            " || !self.output.mergeWeights",
            "output.mergeWeights is not available with training.distributed.strategy fsdp"
            " (merge the adapter afterwards)",
            lambda s: not _fsdp(s) or not s.output.merge_weights,
        ),
        Rule(
            "!has(self.training.distributed) || !has(self.training.distributed.processesPerNode)"
            " || self.resources.gpus == 0 || self.training.distributed.processesPerNode <= self.resources.gpus",
            "training.distributed.processesPerNode cannot exceed resources.gpus (one process per GPU)",
            lambda s: (
                s.training.distributed.processes_per_node is None
                or s.resources.gpus == 0
                or s.training.distributed.processes_per_node <= s.resources.gpus
            ),
        ),
        # Multi-node (issue 15): a gang of resources.nodes pods.
        Rule(
            "self.resources.nodes <= 1 || self.resources.gpus >= 1 || (has(self.training.distributed)"
            " && has(self.training.distributed.backend) && self.training.distributed.backend == 'gloo')",
            "resources.nodes > 1 needs resources.gpus >= 1 per node (or training.distributed.backend gloo, for CPU)",
            lambda s: s.resources.nodes <= 1 or s.resources.gpus >= 1 or s.training.distributed.backend == "gloo",
        ),
        Rule(
            "self.resources.gpus >= 1 || !has(self.training.distributed) || !has(self.training.distributed.backend)"
            " || self.training.distributed.backend != 'nccl'",
            "training.distributed.backend nccl needs resources.gpus >= 1",
            lambda s: s.resources.gpus >= 1 or s.training.distributed.backend != "nccl",
        ),
        Rule(
            "self.method != 'merge' || self.resources.nodes <= 1",
            "method merge trains nothing and runs on one node: resources.nodes must be 1",
            lambda s: s.method != "merge" or s.resources.nodes <= 1,
        ),
        # merge (issue 12): its own section, and nothing that only training reads.
        Rule(
            "self.method != 'merge' || has(self.merge)",
            "method merge requires spec.merge (the adapters to combine)",
            lambda s: s.method != "merge" or has(s, "merge"),
        ),
        Rule(
            "!has(self.merge) || self.method == 'merge'",
            "spec.merge is only valid with method merge",
            lambda s: not has(s, "merge") or s.method == "merge",
        ),
        Rule(
            "self.method != 'merge' || !(has(self.training.maxSteps) || has(self.training.distributed)"
            " || has(self.training.layerwiseLrDecay))",
            "method merge trains nothing: spec.training.maxSteps, distributed and layerwiseLrDecay do not apply",
            lambda s: s.method != "merge" or not any(has(s.training, f) for f in _TRAINING_ONLY),
        ),
        Rule(
            "self.method != 'merge' || !has(self.initFrom)",
            "spec.initFrom does not apply to method merge (its adapters are spec.merge.sources)",
            lambda s: s.method != "merge" or not has(s, "init_from"),
        ),
    )
    base_model: BaseModelSource = Field(description="The model to fine-tune; exactly one of name (hub id) or uri.")
    dataset: Dataset
    init_from: InitFrom | None = Field(
        None,
        description=(
            "Two-stage training: start from a parent FineTuneJob's artifact or an artifact uri instead of fresh "
            "weights (e.g. continued pre-training, then instruction tuning); lineage goes into status.lineage."
        ),
    )
    method: Method = Field(
        "lora",
        description=(
            "lora, qlora (4-bit base), full, prefix tuning, prompt (P-)tuning, ia3, preference tuning: dpo or "
            "orpo (spec.preference), or merge (combine the LoRA adapters of spec.merge, evaluated on spec.dataset "
            "like a training run)."
        ),
    )
    merge: Merge | None = Field(None, description="method merge: which adapters to combine, and how.")
    lora: Lora = Field(default_factory=Lora)
    preference: Preference = Field(default_factory=Preference, description="dpo/orpo settings.")
    quantization: Quantization = Field(default_factory=Quantization)
    prompt_tuning: PromptTuning = Field(default_factory=PromptTuning)
    training: Training = Field(default_factory=Training, json_schema_extra={"default": {}})
    evaluation: Evaluation = Field(default_factory=Evaluation)
    resources: TrainerResources = Field(default_factory=TrainerResources, json_schema_extra={"default": {}})
    env_from: list[EnvFromSource] | None = Field(
        None,
        max_length=16,
        description=(
            "Environment for the trainer from Secrets or ConfigMaps, by reference (as a container's envFrom): e.g. "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL for s3:// locations on S3 or an "
            "S3-compatible store such as MinIO."
        ),
    )
    image: MaybeImage = Field(None, max_length=512, description="Trainer image override.")
    service_account_name: str | None = Field(
        None, max_length=253, description="Trainer pod service account (default from the operator's settings)."
    )
    backoff_limit: int = Field(2, ge=0, le=100)
    active_deadline_seconds: int | None = Field(None, ge=1)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    suspend: bool = False
    output: Output
    tracking: Tracking | None = Field(
        None,
        description=(
            "Experiment tracking and model registry (MLflow). Without this section a run is tracked only when the "
            "operator has a default tracking URI (KUBETUNE_MLFLOW_TRACKING_URI)."
        ),
    )
    schedule: str | None = Field(
        None,
        max_length=128,
        pattern="^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\\S+\\s+){4}\\S+)$",
        description="Cron schedule (5 fields, UTC) that starts a new run for recurring retraining.",
    )

    @property
    def policy_method(self) -> str:
        """The method that decides which weights train: dpo and orpo train an adapter (lora) or all (full)."""
        return self.preference.policy if self.method in PREFERENCE else self.method

    @property
    def gate_mode(self) -> str:
        """gated when any gate is set; without gates a run is never EvalPassed, unless the spec opts out."""
        if self.evaluation.any_gate():
            return "gated"
        return "noGates" if self.evaluation.require_gates else "ungated"
