# torch and peft are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Method merge: combine finished LoRA adapters into one, evaluate it like a trained one, export it the same way.

The recipe: sources -> data -> base model (evaluated) -> combine -> merged adapter (evaluated, gated) -> export.
`recipe.run` hands a merge over here after its `setup`; nothing is trained.

Every combination works on each module's weight delta ΔW = B·A·scaling, the quantity the papers define
their rules on (task arithmetic, TIES, DARE). Combining the A and B factors separately, as peft's
`add_weighted_adapter` does for ``linear`` and plain ``ties``, is not the weighted sum of the deltas
(B₁A₁ + B₂A₂ ≠ (B₁+B₂)(A₁+A₂)), so we never do that:

- ``linear``: the exact weighted sum Σ wᵢ ΔWᵢ, written as one adapter whose factors are the sources'
  factors side by side (rank Σ rᵢ; peft's ``cat``). No SVD, no loss.
- ``svd``, ``ties``, ``dare_linear``, ``dare_ties``: peft's own rules (`peft.utils.merge_utils`, the ones
  its ``*_svd`` combinations use) applied to the deltas, then a truncated SVD back to a rank-``merge.rank``
  adapter (peft's plain ``ties`` would need equal ranks and works on A and B, not on ΔW). In ties the
  sign is elected on the trimmed, unweighted deltas and the weights enter the disjoint mean (peft's rule;
  the paper has one scale for all tasks, which equal weights are). DARE drops weights at random:
  seeded by ``spec.training.seed``, one module after the other in a fixed order, so a merge is
  reproducible.
- ``slerp``: per module, spherical interpolation between the two flattened deltas (the angle measured
  on their unit vectors, the deltas themselves interpolated, as mergekit does; nearly parallel deltas
  fall back to linear interpolation), then the truncated SVD. The result is a LoRA adapter for the same
  base, which the same servers load next to others; ``output.mergeWeights`` also folds it into full weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import export, uris
from kubetune_trainer.config import ConfigError, JobConfig, to_dict

if TYPE_CHECKING:
    import torch

    from kubetune_api.stages import Merge
    from kubetune_trainer.recipe import Setup

log = logging.getLogger("kubetune_trainer")
PREFIX = "base_model.model."  # how peft names a module of the base in an adapter file


@dataclass(frozen=True)
class Source:
    """One spec.merge.sources entry, with where it lives (resolved by the operator for a fineTuneJobRef)."""

    field: str  # spec.merge.sources[i]: for messages
    uri: str
    weight: float
    name: str | None = None  # the source FineTuneJob
    run: int | None = None
    digest: str | None = None  # what the operator recorded; the download is checked against it


@dataclass
class Adapter:
    """A LoRA adapter's factors per module path (as the base names it): (A, B, scaling), ΔW = B·A·scaling."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    rank: int

    def delta(self, path: str) -> torch.Tensor | None:
        if path not in self.modules:
            return None
        a, b, scaling = self.modules[path]
        return (b @ a) * scaling


def sources(cfg: JobConfig) -> list[Source]:
    """The spec's sources in order; a fineTuneJobRef takes the uri and digest the operator resolved."""
    assert cfg.merge is not None
    resolved = {r.get("name"): r for r in cfg.merge_sources if r.get("name")}
    out = []
    for i, s in enumerate(cfg.merge.sources):
        field = f"spec.merge.sources[{i}]"
        if s.uri is not None:
            out.append(Source(field, s.uri, s.weight))
            continue
        assert s.fine_tune_job_ref is not None
        name = s.fine_tune_job_ref.name
        r = resolved.get(name)
        if r is None or not r.get("uri"):
            raise ConfigError(
                f"{field}.fineTuneJobRef: FineTuneJob {name} was not resolved to an artifact (the operator writes "
                "status.mergeSources before a merge starts; locally, give the source as a uri)"
            )
        out.append(Source(field, str(r["uri"]), s.weight, name, r.get("run"), r.get("digest")))
    return out


def fetch(source: Source) -> Path:
    """The adapter folder on this machine: a local path or claim, an hf:// copy, or an s3:// download."""
    kind = uris.scheme(source.uri)
    try:
        if kind in ("file", "pvc"):
            path = uris.local_path(source.uri)
        elif kind == "hf":
            local = uris.hf_local_copy(source.uri)
            if local is None:
                from huggingface_hub import snapshot_download

                local = Path(snapshot_download(source.uri.removeprefix("hf://")))
            path = local
        else:
            path = uris.fetch_remote(source.uri, uris.cache_dir() / "adapters")
    except OSError as e:
        raise ConfigError(f"{source.field}.uri: {e}") from e
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{source.field}: {source.uri} -> {path} holds no adapter (no adapter_config.json)")
    if source.digest and export.directory_digest(path) != source.digest:
        raise ConfigError(
            f"{source.field}: {source.uri} is not the artifact FineTuneJob {source.name} run {source.run} recorded "
            f"(digest {export.directory_digest(path)}, expected {source.digest}): it was changed after that run"
        )
    return path


def read_adapter(path: Path, field: str) -> Adapter:
    """The factors of a plain LoRA adapter; what a delta alone cannot describe is refused by name."""
    from safetensors.torch import load_file

    config = json.loads((path / "adapter_config.json").read_text())
    unsupported = {
        "peft_type": config.get("peft_type") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
    }
    refused = [k for k, bad in unsupported.items() if bad]
    if refused:
        raise ConfigError(f"{field}: only plain LoRA adapters merge; this one has {', '.join(refused)}")
    files = [path / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise ConfigError(f"{field}: {path} has no adapter_model.safetensors")
    weights = load_file(str(files[0]))
    if any(".lora_embedding_" in k for k in weights):
        raise ConfigError(f"{field}: embedding LoRA layers do not merge")
    alpha, rslora = float(config["lora_alpha"]), bool(config.get("use_rslora"))
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        path_ = key.removeprefix(PREFIX).rsplit(".lora_A.", 1)[0]
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        modules[path_] = (a.float(), b.float(), alpha / (math.sqrt(r) if rslora else r))
    if not modules:
        raise ConfigError(f"{field}: {path} holds no LoRA weights")
    return Adapter(modules, int(config.get("r") or max(a.shape[0] for a, _, _ in modules.values())))


def combine(deltas: list[torch.Tensor], weights: list[float], merge: Merge) -> torch.Tensor:
    """One module's merged delta from the sources' deltas (a zero delta for a source without the module)."""
    import torch
    from peft.utils import merge_utils

    w = torch.tensor(weights, dtype=deltas[0].dtype, device=deltas[0].device)
    density, sign = merge.density_or_default, merge.majority_sign_or_default
    if merge.combination in ("linear", "svd"):
        return merge_utils.task_arithmetic(deltas, w)
    if merge.combination == "ties":
        return merge_utils.ties(deltas, w, density, sign)  # type: ignore[arg-type]
    if merge.combination == "dare_linear":
        return merge_utils.dare_linear(deltas, w, density)
    if merge.combination == "dare_ties":
        return merge_utils.dare_ties(deltas, w, density, sign)  # type: ignore[arg-type]
    if merge.combination == "slerp":
        return slerp(deltas[0], deltas[1], merge.t_or_default)
    raise ValueError(f"unknown combination {merge.combination}")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation of two deltas: the angle between their directions, their own lengths."""
    import torch

    x, y = a.flatten(), b.flatten()
    nx, ny = x.norm(), y.norm()
    if nx < eps or ny < eps:
        return (1 - t) * a + t * b
    cos = torch.clamp((x / nx) @ (y / ny), -1.0, 1.0)
    theta = torch.arccos(cos)
    if theta.abs() < 1e-4:  # (nearly) parallel: sin θ ~ 0, and slerp is lerp
        return (1 - t) * a + t * b
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s) * a + (torch.sin(t * theta) / s) * b


def factor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the best rank-``rank`` approximation B·A of ``delta`` (truncated SVD; √S on each side)."""
    import torch

    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.shape[0])
    root = s[:k].sqrt()
    a, b = root[:, None] * vh[:k], u[:, :k] * root[None, :]
    if k < rank:  # a delta smaller than the rank: the spare directions stay zero
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    return a, b


def merged_factors(
    adapters: list[Adapter], weights: list[float], merge: Merge, seed: int
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """({module path: (A, B)} of the merged adapter at scaling 1, its rank)."""
    import torch

    paths = sorted({p for ad in adapters for p in ad.modules})
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if merge.combination == "linear":
        rank = sum(ad.rank for ad in adapters)
        for p in paths:
            a_parts, b_parts = [], []
            shape = next(ad.modules[p] for ad in adapters if p in ad.modules)
            for ad, w in zip(adapters, weights, strict=True):
                if p in ad.modules:
                    a, b, scaling = ad.modules[p]
                    a = torch.cat([a, a.new_zeros(ad.rank - a.shape[0], a.shape[1])])
                    b = torch.cat([b * (w * scaling), b.new_zeros(b.shape[0], ad.rank - b.shape[1])], dim=1)
                else:
                    a, b = (
                        shape[0].new_zeros(ad.rank, shape[0].shape[1]),
                        shape[1].new_zeros(shape[1].shape[0], ad.rank),
                    )
                a_parts.append(a)
                b_parts.append(b)
            out[p] = (torch.cat(a_parts), torch.cat(b_parts, dim=1))
        return out, rank
    rank = merge.rank or max(ad.rank for ad in adapters)
    torch.manual_seed(seed)  # dare_*: the same seed and module order draw the same masks
    for p in paths:
        deltas = [ad.delta(p) for ad in adapters]
        like = next(d for d in deltas if d is not None)
        full = [d if d is not None else torch.zeros_like(like) for d in deltas]
        out[p] = factor(combine(full, weights, merge), rank)
    return out, rank


def apply(base: Any, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> Any:
    """The base wrapped in one LoRA adapter holding ``factors`` (alpha = r: scaling 1, as they were made)."""
    import peft
    import torch

    for p, (a, b) in factors.items():
        try:
            module = base.get_submodule(p)
        except AttributeError:
            raise ConfigError(f"spec.merge.sources: module {p} is not in the base model (another base?)") from None
        if tuple(module.weight.shape) != (b.shape[0], a.shape[1]):
            raise ConfigError(
                f"spec.merge.sources: module {p} is {tuple(module.weight.shape)} in the base model but "
                f"{(b.shape[0], a.shape[1])} in the adapters: they were trained on another base model"
            )
    config = peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM, r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(factors)
    )
    model: Any = peft.get_peft_model(base, config)
    with torch.no_grad():
        for p, (a, b) in factors.items():
            layer: Any = model.get_submodule(PREFIX + p)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    return model


def merge_card(
    cfg: JobConfig,
    resolved: list[tuple[Source, str]],
    rank: int,
    data_info: dict[str, Any],
    base_metrics: dict[str, float],
    metrics: dict[str, float],
    passed: bool | None,
    started: float,
    run: str | None,
) -> dict[str, Any]:
    """Lineage of a merged adapter: every source (uri, digest, weight) and the combination."""
    assert cfg.merge is not None
    m = cfg.merge
    spec = to_dict(cfg)
    how: dict[str, Any] = {"combination": m.combination, "rank": rank, "seed": cfg.training.seed}
    if m.combination in ("ties", "dare_linear", "dare_ties"):
        how["density"] = m.density_or_default
    if m.combination in ("ties", "dare_ties"):
        how["majoritySign"] = m.majority_sign_or_default
    if m.combination == "slerp":
        how["t"] = m.t_or_default
    return {
        "finetuneJob": {"name": cfg.name, "namespace": cfg.namespace, "run": run},
        "baseModel": spec["baseModel"],
        "method": "merge",
        "merge": {
            **how,
            "sources": [
                {"uri": s.uri, "digest": digest, "weight": s.weight, "fineTuneJob": s.name, "run": s.run}
                for s, digest in resolved
            ],
        },
        "dataset": {
            "uri": cfg.dataset.uri or data_info.get("sourceUri"),
            "sha256": data_info["sourceSha256"],
            "counts": data_info["counts"],
        },
        "metrics": {"base": base_metrics, "tuned": metrics},
        "evalPassed": passed,
        "libraries": export.library_versions(),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "durationSeconds": round(time.time() - started, 1),
    }


def run(s: Setup) -> dict[str, Any]:
    """The whole merge job, from a `recipe.setup`: same data, evaluation, gates and export as a training run."""
    from kubetune_trainer import model, pipeline, splits
    from kubetune_trainer.config import to_dict as as_dict
    from kubetune_trainer.progress import StatusReporter

    cfg, device, out_dir = s.cfg, s.device, s.out_dir
    assert cfg.merge is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = StatusReporter(s.env.finetunejob_name, s.env.namespace)

    # 1. sources: every adapter found, checked against its recorded digest and read before the base loads.
    found = [(src, fetch(src)) for src in sources(cfg)]
    resolved = [(src, src.digest or export.directory_digest(path)) for src, path in found]
    adapters = [read_adapter(path, src.field) for src, path in found]

    # 2. data: the evaluation data (test split and golden set), prepared as for training.
    prepared = splits.prepare(cfg, out_dir)
    reporter.data(prepared.counts())

    # 3. base model, evaluated the same way as the merged one will be.
    source = model.resolve_model_source(cfg)
    tokenizer = model.load_tokenizer(source, cfg, s.env.hf_token)
    data = pipeline.tokenize_splits(prepared, cfg, tokenizer, device, cache_dir=out_dir / "data")
    lm = model.load_model(source, cfg, device, s.storage_dtype, s.env.hf_token)
    base_metrics = pipeline.evaluate(lm, tokenizer, data, cfg, device, s.dtype, prompt_learning=False)

    # 4. combine the deltas into one adapter on the base.
    factors, rank = merged_factors(adapters, [src.weight for src, _ in found], cfg.merge, cfg.training.seed)
    lm = apply(lm, {p: (a.to(device), b.to(device)) for p, (a, b) in factors.items()}, rank)
    log.info(
        "merged %d adapters (%s) into rank %d over %d modules", len(found), cfg.merge.combination, rank, len(factors)
    )

    # 5. evaluate the merged adapter and apply the gates.
    samples: list[dict[str, str]] = []
    metrics = pipeline.evaluate(lm, tokenizer, data, cfg, device, s.dtype, False, samples)
    passed, reasons = pipeline.gates(metrics, cfg)

    # 6. export exactly as a LoRA run: eval.json, artifact + card, result.json, termination message, upload.
    eval_report = {
        "evalPassed": passed,
        "gateFailures": reasons,
        "gates": as_dict(cfg.evaluation.gates),
        "base": base_metrics,
        "tuned": metrics,
        "samples": samples,
    }
    export.write_json(out_dir / "eval.json", eval_report)
    card = merge_card(cfg, resolved, rank, prepared.info, base_metrics, metrics, passed, s.started, s.env.run)
    artifact_dir, digest = export.write_artifact(lm, tokenizer, card, out_dir)
    artifact = {"uri": export.artifact_uri(s.remote, out_dir), "digest": digest, "kind": "adapter"}
    if cfg.output.merge_weights:
        _, merged_digest = export.write_merged(lm, tokenizer, out_dir)
        artifact.update(mergedUri=export.artifact_uri(s.remote, out_dir, "merged"), mergedDigest=merged_digest)
    outcome: dict[str, Any] = {
        "phase": "Succeeded",
        "metrics": metrics,
        "evalPassed": passed,
        "data": prepared.counts(),
        "owner": s.owner,
        "baseMetrics": base_metrics,
        "gateFailures": reasons,
        "artifact": artifact,
        "steps": 0,
        "mergeSources": card["merge"]["sources"],
        "worldSize": 1,
    }
    export.write_result(out_dir, outcome)
    export.write_termination_message(outcome, s.env.termination_log)
    if s.remote:
        export.upload(out_dir, s.remote)
    reporter.final(metrics, passed, artifact)
    log.info("artifact %s (%s); evalPassed=%s", artifact_dir, digest, passed)
    return outcome
