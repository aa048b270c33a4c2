"""One FineTuneJob run, top to bottom: setup -> data -> model -> train -> evaluate -> export.

`setup` resolves everything the later steps depend on once (the spec, the operator's environment,
the torchrun world, the device and the dtypes, where the output goes) into a `Setup`; the steps below
it only read that. Bad config or data raise `ConfigError` / `DataError` before any model is loaded.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubetune_trainer import export, init_from, uris
from kubetune_trainer.config import ConfigError, JobConfig, parse_job, to_dict
from kubetune_trainer.environment import TrainerEnv

if TYPE_CHECKING:  # distributed imports torch: not before the spec has been checked
    from kubetune_trainer.distributed import World

log = logging.getLogger("kubetune_trainer")


def load_config(spec_path: str) -> JobConfig:
    try:
        obj = yaml.safe_load(Path(spec_path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{spec_path}: cannot read the FineTuneJob ({e})") from e
    return parse_job(obj)


def output_location(cfg: JobConfig, override: str | None, env: TrainerEnv) -> tuple[Path, str | None]:
    """(local directory to write into, remote URI to upload to afterwards or None).

    Precedence: ``--output``, then ``KUBETUNE_OUTPUT_DIR`` (set by the operator), then
    ``spec.output.uri``. A remote spec URI (s3://) is still the upload target when the operator
    hands us a local working directory.
    """
    target = override or env.output_dir or cfg.output.uri
    if uris.scheme(target) in ("file", "pvc"):
        spec_uri = cfg.output.uri
        remote = spec_uri if not override and uris.scheme(spec_uri) not in ("file", "pvc") else None
        return uris.local_path(target), remote
    return uris.cache_dir() / "runs" / f"{cfg.namespace or 'local'}-{cfg.name}-{env.owner_run}", target


@dataclass(frozen=True)
class Setup:
    """What every step of the run reads; resolved once by `setup`."""

    cfg: JobConfig
    env: TrainerEnv
    world: World
    device: str  # "cuda", "cuda:<local rank>" under torchrun, or "cpu"
    dtype: Any  # torch.dtype of the compute (autocast): spec.training.precision on this device
    storage_dtype: Any  # torch.dtype the frozen base weights are loaded in
    out_dir: Path
    remote: str | None  # s3:// (or other fsspec) location to upload to, None when out_dir is the output
    owner: dict[str, str]  # {"uid", "run"}: whose run the output and checkpoints are
    started: float
    init: init_from.InitArtifact | None  # spec.initFrom: the artifact this run starts from

    @property
    def main_rank(self) -> bool:
        """Only rank 0 writes files and talks to Kubernetes."""
        return self.world.is_main


def setup(spec_path: str, output: str | None, env: TrainerEnv, world: World) -> Setup:
    """Config first: everything that can be wrong with the spec fails here, before the process group."""
    from kubetune_trainer import distributed, pipeline, train

    started = time.time()
    cfg = load_config(spec_path)
    init = init_from.resolve(cfg)
    init_from.check_method(cfg, init)  # a method that cannot continue the artifact fails before any data
    out_dir, remote = output_location(cfg, output, env)
    owner = {"uid": cfg.uid or "", "run": env.owner_run}
    export.refuse_foreign_result(out_dir, remote, owner)
    distributed.init(world, env.dist_backend)  # a no-op unless launched by torchrun
    device = distributed.device_for(world)
    dtype = train.resolve_precision(cfg.training.precision, device)
    storage = pipeline.storage_dtype(cfg, device, dtype)
    return Setup(cfg, env, world, device, dtype, storage, out_dir, remote, owner, started, init)


def run(
    spec_path: str, output: str | None = None, env: TrainerEnv | None = None, world: World | None = None
) -> dict[str, Any]:
    """The whole job. ``env`` and ``world``: this process's, which `cli.main` reads once (read here
    when a caller such as a test passes none)."""
    from kubetune_trainer import checkpoint, distributed, model, pipeline, splits, tracking, train
    from kubetune_trainer.progress import Metrics, StatusReporter

    # 1. setup: config, environment, world, device, dtype.
    env = env or TrainerEnv.from_environ(os.environ)
    s = setup(spec_path, output, env, world or distributed.World.from_environ(os.environ))
    if s.cfg.method == "merge":  # trains nothing: combines finished adapters (its own recipe, merging.py)
        from kubetune_trainer import merging

        return merging.run(s)
    cfg, world, device, out_dir = s.cfg, s.world, s.device, s.out_dir
    if s.main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
    # MLflow (spec.tracking or the operator's default): rank 0 only; its failures never fail the run.
    tracker = tracking.Tracker(tracking.target(cfg, s.env) if s.main_rank else None)
    reporter = (
        StatusReporter(s.env.finetunejob_name, s.env.namespace, on_progress=tracker.progress)
        if s.main_rank
        else StatusReporter()
    )
    if s.main_rank:  # model, data and adapter downloads and the artifact upload show in status.progress
        from kubetune_trainer import transfers

        transfers.report_to(reporter.transfer)

    # 2. data: validated, cleaned and split before any model is loaded (rank 0 first, then the first
    # process of each other pod onto that pod's disk; the rest reuse it).
    from kubetune_trainer.captured import NoNewData

    try:
        with distributed.in_turn(world):
            prepared = splits.prepare(cfg, out_dir, int(s.env.run or 0), s.owner)
            if world.local_rank == 0:  # each pod's disk: resume only from this FineTuneJob run's checkpoints
                # (a re-created one has a new uid)
                checkpoint.claim(out_dir / "checkpoints", cfg.uid, s.owner["run"])
    except NoNewData as skip:  # spec.dataset.captures: nothing new since the last run; not a failure
        return _skipped(s, reporter, skip)
    if s.main_rank:
        reporter.data(prepared.counts())
        tracker.start(cfg, prepared.info, s.env.run)

    # 3. model: tokenizer first, so the data is tokenised once.
    import torch

    # A model artifact from spec.initFrom replaces the base weights (and brings its tokenizer).
    init = s.init
    source = str(init.path) if init is not None and init.kind == "model" else model.resolve_model_source(cfg)
    tokenizer = model.load_tokenizer(source, cfg, s.env.hf_token)
    # Token ids are cached next to the splits: rank 0 writes them (and each other pod's first process on
    # its own disk), the other ranks and retries read them.
    with distributed.in_turn(world):
        data = pipeline.tokenize_splits(prepared, cfg, tokenizer, device, cache_dir=out_dir / "data")
    lm = model.load_model(source, cfg, device, s.storage_dtype, s.env.hf_token)
    prompt_learning = model.uses_prompt_learning(cfg.method)
    # spec.evaluation.judge's baseline: the starting point's answers, generated before training changes it.
    base_answers: list[str] = []
    if init is not None and init.kind == "adapter":
        # "base" metrics are the starting point's: base model + the parent's adapter, so the card shows
        # what this stage added.
        lm = model.apply_method(lm, cfg, cfg.training.gradient_checkpointing, init_adapter=init.path)
        base_metrics = pipeline.evaluate(
            lm, tokenizer, data, cfg, device, s.dtype, prompt_learning, answers_out=base_answers
        )
    else:
        base_metrics = pipeline.evaluate(
            lm, tokenizer, data, cfg, device, s.dtype, prompt_learning=False, answers_out=base_answers
        )
        torch.manual_seed(cfg.training.seed)  # adapter init is random: same seed, same starting adapter
        lm = model.apply_method(lm, cfg, cfg.training.gradient_checkpointing)
    objective = None  # dpo/orpo: the preference loss (and its reference) instead of next-token cross-entropy
    if cfg.dataset.format == "preference":
        from kubetune_trainer import preference

        init_adapter = init.path if init is not None and init.kind == "adapter" else None
        objective = preference.objective(lm, cfg, tokenizer.pad_token_id, init_adapter)

    # 4. train (resumes from the newest checkpoint in out_dir, if any).
    try:
        result = train.train(
            lm,
            data.train,
            data.validation,
            cfg.training,
            pad_id=tokenizer.pad_token_id,
            device=device,
            dtype=s.dtype,
            output_dir=out_dir,
            reporter=reporter,
            metrics=Metrics(s.env.metrics_port) if s.main_rank else None,
            prompt_learning=prompt_learning,
            world=world,
            checkpoint_remote=f"{s.remote.rstrip('/')}/checkpoints" if s.remote else None,
            objective=objective,
            varlen=data.varlen,
        )
    except BaseException as stopped:  # the MLflow run ends with the pod: KILLED when preempted (SIGTERM)
        tracker.end("KILLED" if isinstance(stopped, train.Preempted) else "FAILED")
        raise

    # 5. evaluate the tuned model the same way as the base, and apply the gates.
    samples: list[dict[str, str]] = []
    tuned_answers: list[str] = []
    metrics = pipeline.evaluate(
        lm, tokenizer, data, cfg, device, s.dtype, prompt_learning, samples, objective, tuned_answers
    )
    if objective is not None:
        from kubetune_trainer import preference

        preference.release(objective)
    judged = None  # spec.evaluation.judge: rank 0 asks it (the other ranks' outcome is not reported)
    if cfg.evaluation.judge is not None and s.main_rank:
        judged = pipeline.judge(cfg, data.golden, tuned_answers, base_answers, s.env.judge_url, s.env.judge_api_key)
        if "winRate" in judged and not judged.get("error"):
            metrics["judgeWinRate"] = judged["winRate"]
    passed, reasons = pipeline.gates(metrics, cfg, judged)
    outcome: dict[str, Any] = {
        "phase": "Succeeded",
        "metrics": metrics,
        "evalPassed": passed,
        "data": prepared.counts(),
        "owner": s.owner,  # refuse_foreign_result: a later FineTuneJob with this output does not overwrite it
        **({"judge": judged} if judged is not None else {}),
    }
    # Under fsdp the trained weights are sharded: gather them (every rank takes part) for rank 0 to save.
    gathered = distributed.full_state_dict(lm) if distributed.is_sharded(lm) else None
    if not s.main_rank:
        distributed.shutdown(world)
        return outcome

    # 6. export: eval.json, artifact + model card, result.json (+ upload for s3).
    eval_report = {
        "evalPassed": passed,
        "gateFailures": reasons,
        "gates": to_dict(cfg.evaluation.gates),
        "base": base_metrics,
        "tuned": metrics,
        "samples": samples,
        **({"judge": judged} if judged is not None else {}),
    }
    export.write_json(out_dir / "eval.json", eval_report)
    pictures = _plots(result.history, base_metrics, metrics, out_dir)
    lineage = pipeline.lineage(prepared.info, init_from.record(init))
    card = pipeline.model_card(
        cfg, prepared.info, base_metrics, metrics, result, passed, s.started, s.env.run, lineage=lineage
    )
    artifact_dir, digest = export.write_artifact(lm, tokenizer, card, out_dir, state_dict=gathered)
    # kind tells a server what it holds: an adapter for the base model, or a whole model (full fine-tune).
    kind = "model" if cfg.policy_method == "full" else "adapter"
    artifact = {"uri": export.artifact_uri(s.remote, out_dir), "digest": digest, "kind": kind}
    if cfg.output.merge_weights and cfg.policy_method != "full":
        _, merged_digest = export.write_merged(lm, tokenizer, out_dir)
        artifact.update(mergedUri=export.artifact_uri(s.remote, out_dir, "merged"), mergedDigest=merged_digest)
    card_file = artifact_dir / "model_card.json"
    base_revision = cfg.base_model.revision
    tags = tracking.lineage_tags(lineage, base_revision, passed)
    tracker.finish(base_metrics, metrics, [out_dir / "eval.json", card_file, *pictures], artifact["uri"], tags)
    outcome.update(
        baseMetrics=base_metrics,
        gateFailures=reasons,
        artifact=artifact,
        steps=result.steps,
        stoppedEarly=result.stopped_early,
        worldSize=world.size,
        lineage=lineage,
        **({"tracking": tracker.status()} if tracker.status() else {}),
    )
    export.write_result(out_dir, outcome)
    export.write_termination_message(outcome, s.env.termination_log)
    if s.remote:
        export.upload(out_dir, s.remote, skip=("checkpoints",))  # train() mirrored those as it wrote them
    reporter.final(metrics, passed, artifact)
    log.info("artifact %s (%s); evalPassed=%s", artifact_dir, digest, passed)
    distributed.shutdown(world)
    return outcome


def _plots(history: list[dict[str, Any]], base: dict[str, float], tuned: dict[str, float], out_dir: Path) -> list[Path]:
    """loss.png and metrics.png into the run folder; a picture that cannot be drawn is logged, not fatal."""
    from kubetune_trainer import plots

    try:
        return plots.write_run_plots(history, base, tuned, out_dir)
    except Exception as e:  # matplotlib missing or broken: the model is still good
        log.warning("could not draw the run's plots: %s", e)
        return []


def _skipped(s: Setup, reporter: Any, skip: Any) -> dict[str, Any]:
    """End the run Skipped (reason NoNewData): nothing trained; status.artifact stays the last run's."""
    from kubetune_trainer import captured, distributed

    outcome: dict[str, Any] = {
        "phase": "Skipped",
        "reason": "NoNewData",
        "message": str(skip),
        "data": skip.data,
        "metrics": {},
        "owner": s.owner,
    }
    previous = captured.previous_artifact(s.cfg.output.uri, int(s.env.run or 0), s.cfg.uid)
    if previous:
        outcome["artifact"] = previous
    if s.main_rank:
        reporter.data(skip.data)
        export.write_result(s.out_dir, outcome)
        export.write_termination_message(outcome, s.env.termination_log)
        if s.remote:
            export.upload(s.out_dir, s.remote, skip=("checkpoints",))
        log.info("run skipped: %s", skip)
    distributed.shutdown(s.world)
    return outcome
