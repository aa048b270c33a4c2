"""``python -m kubetune_trainer train SPEC`` and ``make-tiny-model OUT``.

`run` is the whole job, top to bottom: config -> data -> model -> train -> evaluate -> export. Bad
config or data exit with status 2 and a one-line error before any model is loaded; SIGTERM exits 143
after writing a checkpoint, so the Kubernetes Job's retry resumes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kubetune_trainer import export, uris
from kubetune_trainer.config import ConfigError, JobConfig, parse_job, to_dict
from kubetune_trainer.sources import DataError

log = logging.getLogger("kubetune_trainer")

#: Exit statuses the operator's Job relies on (its podFailurePolicy): a bad spec or bad data is final;
#: a preempted run (SIGTERM, checkpoint written) is retried and resumes; anything else is retried.
EXIT_BAD_CONFIG = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a container killed by SIGTERM reports anyway
EXIT_FAILED = 1


def load_config(spec_path: str) -> JobConfig:
    try:
        obj = yaml.safe_load(Path(spec_path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{spec_path}: cannot read the FineTuneJob ({e})") from e
    return parse_job(obj)


def output_location(cfg: JobConfig, override: str | None) -> tuple[Path, str | None]:
    """(local directory to write into, remote URI to upload to afterwards or None).

    Precedence: ``--output``, then ``KUBETUNE_OUTPUT_DIR`` (set by the operator), then
    ``spec.output.uri``. A remote spec URI (s3://) is still the upload target when the operator
    hands us a local working directory.
    """
    target = override or os.environ.get("KUBETUNE_OUTPUT_DIR") or cfg.output.uri
    if uris.scheme(target) in ("file", "pvc"):
        spec_uri = cfg.output.uri
        remote = spec_uri if not override and uris.scheme(spec_uri) not in ("file", "pvc") else None
        return uris.local_path(target), remote
    run = os.environ.get("KUBETUNE_RUN", "0")
    return uris.cache_dir() / "runs" / f"{cfg.namespace or 'local'}-{cfg.name}-{run}", target


def run(spec_path: str, output: str | None = None) -> dict[str, Any]:
    from kubetune_trainer import checkpoint, distributed, model, pipeline, splits, train
    from kubetune_trainer.progress import Metrics, StatusReporter

    started = time.time()
    # 1. config: everything that can be wrong with the spec fails here.
    cfg = load_config(spec_path)
    out_dir, remote = output_location(cfg, output)
    owner = {"uid": cfg.uid or "", "run": os.environ.get("KUBETUNE_RUN", "0")}
    export.refuse_foreign_result(out_dir, remote, owner)
    world = distributed.init()  # a no-op unless launched by torchrun
    main_rank = world.is_main  # only rank 0 writes files and talks to Kubernetes
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
    reporter = StatusReporter.from_env() if main_rank else StatusReporter()

    # 2. data: validated, cleaned and split before any model is loaded (rank 0 first; the rest reuse it).
    if not main_rank:
        distributed.barrier(world)
    prepared = splits.prepare(cfg, out_dir)
    if main_rank:
        reporter.data(prepared.counts())
        # Resume only from checkpoints this FineTuneJob's run wrote (a re-created one has a new uid).
        checkpoint.claim(out_dir / "checkpoints", cfg.uid, owner["run"])
        distributed.barrier(world)

    # 3. model: tokenizer first, so the data is tokenised once.
    import torch

    device = distributed.device_for(world)
    source = model.resolve_model_source(cfg)
    tokenizer = model.load_tokenizer(source, cfg)
    # Token ids are cached next to the splits: rank 0 writes them, the other ranks and retries read them.
    if not main_rank:
        distributed.barrier(world)
    data = pipeline.tokenize_splits(prepared, cfg, tokenizer, cache_dir=out_dir / "data")
    if main_rank:
        distributed.barrier(world)
    lm = model.load_model(source, cfg, device, pipeline.storage_dtype(cfg, device))
    base_metrics = pipeline.evaluate(lm, tokenizer, data, cfg, device, prompt_learning=False)
    torch.manual_seed(cfg.training.seed)  # adapter init is random: same seed, same starting adapter
    lm = model.apply_method(lm, cfg, cfg.training.gradient_checkpointing)

    # 4. train (resumes from the newest checkpoint in out_dir, if any).
    result = train.train(
        lm,
        data.train,
        data.validation,
        cfg.training,
        pad_id=tokenizer.pad_token_id,
        device=device,
        output_dir=out_dir,
        reporter=reporter,
        metrics=Metrics() if main_rank else None,
        prompt_learning=model.uses_prompt_learning(cfg.method),
        world=world,
        checkpoint_remote=f"{remote.rstrip('/')}/checkpoints" if remote else None,
    )

    # 5. evaluate the tuned model the same way as the base, and apply the gates.
    samples: list[dict[str, str]] = []
    metrics = pipeline.evaluate(lm, tokenizer, data, cfg, device, model.uses_prompt_learning(cfg.method), samples)
    passed, reasons = pipeline.gates(metrics, cfg)
    outcome: dict[str, Any] = {
        "phase": "Succeeded",
        "metrics": metrics,
        "evalPassed": passed,
        "data": prepared.counts(),
        "owner": owner,  # refuse_foreign_result: a later FineTuneJob with this output does not overwrite it
    }
    # Under fsdp the trained weights are sharded: gather them (every rank takes part) for rank 0 to save.
    gathered = distributed.full_state_dict(lm) if distributed.is_sharded(lm) else None
    if not main_rank:
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
    }
    export.write_json(out_dir / "eval.json", eval_report)
    card = pipeline.model_card(cfg, prepared.info, base_metrics, metrics, result, passed, started)
    artifact_dir, digest = export.write_artifact(lm, tokenizer, card, out_dir, state_dict=gathered)
    # kind tells a server what it holds: an adapter for the base model, or a whole model (full fine-tune).
    kind = "model" if cfg.method == "full" else "adapter"
    artifact = {"uri": export.artifact_uri(remote, out_dir), "digest": digest, "kind": kind}
    if cfg.output.merge_weights and cfg.method != "full":
        _, merged_digest = export.write_merged(lm, tokenizer, out_dir)
        artifact.update(mergedUri=export.artifact_uri(remote, out_dir, "merged"), mergedDigest=merged_digest)
    outcome.update(
        baseMetrics=base_metrics,
        gateFailures=reasons,
        artifact=artifact,
        steps=result.steps,
        stoppedEarly=result.stopped_early,
        worldSize=world.size,
    )
    export.write_result(out_dir, outcome)
    export.write_termination_message(outcome)
    if remote:
        export.upload(out_dir, remote, skip=("checkpoints",))  # train() mirrored those as it wrote them
    reporter.final(metrics, passed, artifact)
    log.info("artifact %s (%s); evalPassed=%s", artifact_dir, digest, passed)
    distributed.shutdown(world)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune_trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a FineTuneJob spec")
    t.add_argument("spec_file", nargs="?", help="FineTuneJob YAML (same as --spec)")
    t.add_argument("--spec", help="FineTuneJob YAML (the operator mounts it at /etc/kubetune/finetunejob.yaml)")
    t.add_argument("--output", help="output directory or URI; overrides KUBETUNE_OUTPUT_DIR and spec.output.uri")
    m = sub.add_parser("make-tiny-model", help="build the tiny local test model + tokenizer into OUT")
    m.add_argument("out", nargs="?", help="directory (default: $KUBETUNE_CACHE/tiny-model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # progress bars garble Job logs

    if args.command == "make-tiny-model":
        from kubetune_trainer.tiny_model import ensure_tiny_model

        print(ensure_tiny_model(Path(args.out) if args.out else None))
        return 0

    spec = args.spec or args.spec_file
    if not spec:
        parser.error("train needs a spec file (positional or --spec)")
    from kubetune_trainer.train import Preempted

    try:
        relaunch_under_torchrun(spec, list(sys.argv[1:] if argv is None else argv))
        run(spec, args.output)
    except (ConfigError, DataError, uris.EscapesClaim) as e:  # the spec's own fault: final, not retried
        print(f"error: {e}", file=sys.stderr)
        reason = "InvalidData" if isinstance(e, DataError) else "InvalidConfig"
        _record_failure(spec, args.output, str(e), reason, getattr(e, "data", None))
        return EXIT_BAD_CONFIG
    except export.OutputTaken as e:  # final, and the result.json there is not ours to replace
        print(f"error: {e}", file=sys.stderr)
        export.write_termination_message(
            {"phase": "Failed", "reason": "OutputTaken", "message": str(e), "evalPassed": False, "metrics": {}}
        )
        return EXIT_BAD_CONFIG
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception as e:
        log.exception("training failed")
        _record_failure(spec, args.output, f"{type(e).__name__}: {e}", "TrainerError")
        return EXIT_FAILED
    return 0


def relaunch_under_torchrun(spec: str, argv: list[str]) -> None:
    """With several GPUs in the pod (or ``training.distributed.processesPerNode`` > 1), become torchrun
    running one trainer per process; return (and train here) when one process is all there is to run."""
    from kubetune_trainer import distributed

    if distributed.under_torchrun():
        return
    requested = load_config(spec).training.distributed.processes_per_node
    nproc = distributed.processes_wanted(requested)
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"spec.training.distributed.processesPerNode: {nproc} processes, but only "
            f"{torch.cuda.device_count()} GPUs are visible (request them in spec.resources.gpus)"
        )
    if nproc > 1:
        log.info("launching %d training processes under torchrun", nproc)
        distributed.launch(nproc, argv)


def _record_failure(
    spec: str, output: str | None, message: str, reason: str, data: dict[str, int] | None = None
) -> None:
    """Best effort: tell the operator (termination message) and leave a Failed result.json if we can.

    ``reason`` (CamelCase: InvalidConfig, InvalidData, TrainerError) and ``message`` become the
    FineTuneJob's Failed condition; ``data`` (the cleaning counts so far) its status.data. (``main``
    reports OutputTaken itself: that result.json is not ours to replace.)
    """
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    failed: dict[str, Any] = {"phase": "Failed", "reason": reason, "message": message, "evalPassed": False}
    failed["metrics"] = {}
    if data:
        failed["data"] = data
    export.write_termination_message(failed)
    with contextlib.suppress(Exception):  # the error itself is already on stderr; this is extra
        try:
            out_dir, _ = output_location(load_config(spec), output)
        except ConfigError:
            fallback = output or os.environ.get("KUBETUNE_OUTPUT_DIR")
            if not fallback:
                return
            out_dir = uris.local_path(fallback)
        export.write_result(out_dir, failed)
