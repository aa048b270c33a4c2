"""``python -m kubetune_trainer train SPEC`` and ``make-tiny-model OUT``: argument parsing only.

The run itself is `recipe.run`. Here: the torchrun relaunch, and the mapping of how a run ends to the
exit status the operator's Job relies on. Bad config or data exit with status 2 and a one-line error
before any model is loaded; SIGTERM exits 143 after writing a checkpoint, so the Kubernetes Job's
retry resumes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import export, uris
from kubetune_trainer.config import ConfigError
from kubetune_trainer.environment import TrainerEnv, termination_log
from kubetune_trainer.recipe import load_config, output_location
from kubetune_trainer.sources import DataError

if TYPE_CHECKING:
    from kubetune_trainer.distributed import World

log = logging.getLogger("kubetune_trainer")

#: Exit statuses the operator's Job relies on (its podFailurePolicy): a bad spec or bad data is final;
#: a preempted run (SIGTERM, checkpoint written) is retried and resumes; anything else is retried.
EXIT_BAD_CONFIG = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a container killed by SIGTERM reports anyway
EXIT_FAILED = 1


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
    from kubetune_trainer import recipe
    from kubetune_trainer.distributed import World
    from kubetune_trainer.train import Preempted

    # The process's environment, read once: the operator's variables, and torchrun's.
    try:
        env, world = TrainerEnv.from_environ(os.environ), World.from_environ(os.environ)
    except ConfigError as e:  # the pod's environment is wrong (not the spec): final, and reported
        print(f"error: {e}", file=sys.stderr)
        # The pod's own termination message only: without its rank, it cannot know whose output is whose.
        failed = {"phase": "Failed", "reason": "InvalidConfig", "message": str(e), "evalPassed": False, "metrics": {}}
        export.write_termination_message(failed, termination_log(os.environ))
        return EXIT_BAD_CONFIG
    try:
        relaunch_under_torchrun(spec, list(sys.argv[1:] if argv is None else argv), env)
        recipe.run(spec, args.output, env, world)
    except (ConfigError, DataError, uris.EscapesClaim) as e:  # the spec's own fault: final, not retried
        print(f"error: {e}", file=sys.stderr)
        reason = "InvalidData" if isinstance(e, DataError) else "InvalidConfig"
        _record_failure(spec, args.output, env, world, str(e), reason, getattr(e, "data", None))
        return EXIT_BAD_CONFIG
    except export.OutputTaken as e:  # final, and the result.json there is not ours to replace
        print(f"error: {e}", file=sys.stderr)
        if world.is_main and env.first_node:
            export.write_termination_message(
                {"phase": "Failed", "reason": "OutputTaken", "message": str(e), "evalPassed": False, "metrics": {}},
                env.termination_log,
            )
        return EXIT_BAD_CONFIG
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception as e:
        log.exception("training failed")
        _record_failure(spec, args.output, env, world, f"{type(e).__name__}: {e}", "TrainerError")
        return EXIT_FAILED
    return 0


def relaunch_under_torchrun(spec: str, argv: list[str], env: TrainerEnv) -> None:
    """With several GPUs in the pod (or ``training.distributed.processesPerNode`` > 1), or in any pod of a
    gang (``env.rendezvous``), become torchrun running one trainer per process; return (and train here)
    when one process is all there is to run."""
    from kubetune_trainer import distributed

    if distributed.under_torchrun(os.environ):
        return
    cfg = load_config(spec)
    if cfg.method == "merge":
        if env.rendezvous is not None:  # admission refuses it; a Job written by hand may not
            raise ConfigError(
                f"method merge runs in one process: spec.resources.nodes must be 1, not {env.rendezvous.nodes}"
            )
        return  # merging trains nothing: one process does it, whatever the GPUs
    nproc = distributed.processes_wanted(cfg.training.distributed.processes_per_node)
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"spec.training.distributed.processesPerNode: {nproc} processes, but only "
            f"{torch.cuda.device_count()} GPUs are visible (request them in spec.resources.gpus)"
        )
    if env.rendezvous is not None:  # even one process per pod: the ranks of a gang meet under torchrun
        r = env.rendezvous
        log.info("node %d of %d: launching %d training processes under torchrun (rendezvous %s:%d)",
                 r.node_rank, r.nodes, nproc, r.master_addr, r.master_port)  # fmt: skip
        distributed.launch(nproc, argv, r)
    elif nproc > 1:
        log.info("launching %d training processes under torchrun", nproc)
        distributed.launch(nproc, argv)


def _record_failure(
    spec: str,
    output: str | None,
    env: TrainerEnv,
    world: World,
    message: str,
    reason: str,
    data: dict[str, int] | None = None,
) -> None:
    """Best effort: tell the operator (termination message) and leave a Failed result.json if we can.

    ``reason`` (CamelCase: InvalidConfig, InvalidData, TrainerError) and ``message`` become the
    FineTuneJob's Failed condition; ``data`` (the cleaning counts so far) its status.data. (``main``
    reports OutputTaken itself: that result.json is not ours to replace.)
    """
    if not (world.is_main and env.first_node):  # only world rank 0 reports: node 0's first process
        return
    failed: dict[str, Any] = {"phase": "Failed", "reason": reason, "message": message, "evalPassed": False}
    failed["metrics"] = {}
    if data:
        failed["data"] = data
    export.write_termination_message(failed, env.termination_log)
    with contextlib.suppress(Exception):  # the error itself is already on stderr; this is extra
        try:
            out_dir, _ = output_location(load_config(spec), output, env)
        except ConfigError:
            fallback = output or env.output_dir
            if not fallback:
                return
            out_dir = uris.local_path(fallback)
        export.write_result(out_dir, failed)
