"""What the operator tells the trainer through its Job's environment, read once into `TrainerEnv`.

The operator's builder (operator/kubetune_operator/builders/trainer_job.py) writes these variables;
``tests/trainer/test_trainer_environment.py`` builds a Job with that builder and fails when the two
lists differ, so a variable cannot be set there and forgotten here (or the reverse). Locally every
variable is optional.

    KUBETUNE_FINETUNEJOB_NAME, KUBETUNE_NAMESPACE  which FineTuneJob's status to patch (in-cluster only)
    KUBETUNE_RUN                                    run number: checkpoint and result owner, model card
    KUBETUNE_OUTPUT_DIR                             output location; beats spec.output.uri
    KUBETUNE_METRICS_PORT                           Prometheus port (default 9400; 0 = off)
    KUBETUNE_TERMINATION_LOG                        local only: where the termination message goes
                                                    (default /dev/termination-log, which the kubelet makes)
    HF_TOKEN                                        hub token for gated models / datasets (a Secret's key)
    KUBETUNE_JUDGE_URL                              spec.evaluation.judge.modelDeploymentRef, resolved
    KUBETUNE_JUDGE_API_KEY                          spec.evaluation.judge.apiKeySecretRef (a Secret's key)
    KUBETUNE_MLFLOW_TRACKING_URI                    MLflow server (spec.tracking.mlflow or the operator's
                                                    default); beats the spec's, like the two names below
    KUBETUNE_MLFLOW_EXPERIMENT                      the experiment, defaults filled in by the operator
    KUBETUNE_MLFLOW_REGISTERED_MODEL                the registered model a successful run becomes a version of

A gang (spec.resources.nodes > 1: one pod per node, torchrun's static rendezvous on node 0), read into
`Rendezvous`; the operator sets these only for a gang, so a single-node Job has none of them:

    KUBETUNE_NODES                                  pods in the gang (absent or "1": one node)
    KUBETUNE_NODE_RANK                              this pod's rank, 0..N-1 (the Job completion index)
    KUBETUNE_MASTER_ADDR                            node 0's DNS name (<host>.<subdomain>.<namespace>.svc)
    KUBETUNE_MASTER_PORT                            the rendezvous port on node 0 (default 29500)
    KUBETUNE_DIST_BACKEND                           gloo | nccl (unset: nccl with CUDA, gloo without)

Kubeflow Trainer's torch runtime (a TrainJob) sets torchrun's own names instead: PET_NNODES,
PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, read when the KUBETUNE_ one is absent.

Read by MLflow's client itself (from spec.tracking.mlflow.credentialsSecretRef, by reference):
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN.

Read by `uris` instead, the location resolver the serving fetcher (kubetune_server) shares:

    KUBETUNE_PVC_ROOT                               where pvc://claim/path is mounted (default /mnt/pvc)
    KUBETUNE_CACHE                                  local only: tiny model and remote downloads
    KUBETUNE_HF_ROOT                                local only: copies standing in for hf://org/name

torchrun's RANK / WORLD_SIZE / LOCAL_RANK are the `distributed.World`'s, not these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubetune_trainer.config import ConfigError

TERMINATION_LOG = "/dev/termination-log"

#: The variables `TrainerEnv.from_environ` reads.
READ_HERE = (
    "KUBETUNE_FINETUNEJOB_NAME",
    "KUBETUNE_NAMESPACE",
    "KUBETUNE_RUN",
    "KUBETUNE_OUTPUT_DIR",
    "KUBETUNE_METRICS_PORT",
    "KUBETUNE_TERMINATION_LOG",
    "HF_TOKEN",
    "KUBETUNE_JUDGE_URL",
    "KUBETUNE_JUDGE_API_KEY",
    "KUBETUNE_MLFLOW_TRACKING_URI",
    "KUBETUNE_MLFLOW_EXPERIMENT",
    "KUBETUNE_MLFLOW_REGISTERED_MODEL",
    "KUBETUNE_NODES",
    "KUBETUNE_NODE_RANK",
    "KUBETUNE_MASTER_ADDR",
    "KUBETUNE_MASTER_PORT",
    "KUBETUNE_DIST_BACKEND",
)
#: Kubeflow Trainer's names for the same facts (`Rendezvous`), read when the KUBETUNE_ one is absent.
KUBEFLOW_NAMES = {
    "KUBETUNE_NODES": "PET_NNODES",
    "KUBETUNE_NODE_RANK": "PET_NODE_RANK",
    "KUBETUNE_MASTER_ADDR": "PET_MASTER_ADDR",
    "KUBETUNE_MASTER_PORT": "PET_MASTER_PORT",
}
READ_FROM_KUBEFLOW = tuple(KUBEFLOW_NAMES.values())
#: Set by the operator only on a gang's pods (spec.resources.nodes > 1).
SET_FOR_GANGS = (
    "KUBETUNE_NODES",
    "KUBETUNE_NODE_RANK",
    "KUBETUNE_MASTER_ADDR",
    "KUBETUNE_MASTER_PORT",
    "KUBETUNE_DIST_BACKEND",
)
#: The variables `kubetune_trainer.uris` reads (shared with the serving fetcher, so not passed down).
READ_BY_URIS = ("KUBETUNE_PVC_ROOT", "KUBETUNE_CACHE", "KUBETUNE_HF_ROOT")
#: Set by tests and the development executor, never by the operator's Job.
LOCAL_ONLY = ("KUBETUNE_TERMINATION_LOG", "KUBETUNE_CACHE", "KUBETUNE_HF_ROOT")


def termination_log(environ: Mapping[str, str]) -> Path:
    """Where the termination message goes: also for a pod whose other variables do not parse."""
    return Path(environ.get("KUBETUNE_TERMINATION_LOG") or TERMINATION_LOG)


DEFAULT_MASTER_PORT = 29500
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class Rendezvous:
    """Where this pod stands in a gang: torchrun's static rendezvous (``--nnodes --node-rank
    --master-addr --master-port``), the same on every pod but for ``node_rank``."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Rendezvous | None:
        """None for one node; a `ConfigError` naming the variable when one is missing or wrong.

        >>> Rendezvous.from_environ({"KUBETUNE_NODES": "2", "KUBETUNE_NODE_RANK": "1", "KUBETUNE_MASTER_ADDR": "a"})
        Rendezvous(nodes=2, node_rank=1, master_addr='a', master_port=29500)
        >>> Rendezvous.from_environ({"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "m",
        ...                          "PET_MASTER_PORT": "23456"}).master_port
        23456
        >>> Rendezvous.from_environ({"KUBETUNE_NODES": "1"}) is None
        True
        """
        found: dict[str, tuple[str, str | None]] = {}  # KUBETUNE_ name -> (the name the value came from, the value)
        for ours, theirs in KUBEFLOW_NAMES.items():
            mine, kubeflow = environ.get(ours), environ.get(theirs)  # both asked, whatever the answer
            found[ours] = (ours, mine) if mine else (theirs, kubeflow)
        nodes_var, nodes_text = found["KUBETUNE_NODES"]
        nodes = _integer(nodes_var, nodes_text or "1", 1, None, "the number of pods in the gang")
        if nodes == 1:
            return None
        rank_var, rank_text = found["KUBETUNE_NODE_RANK"]
        if not rank_text:
            raise ConfigError(
                f"KUBETUNE_NODE_RANK is not set: with KUBETUNE_NODES={nodes} every pod needs its node rank "
                "(the operator sets it from the Job's completion index annotation)"
            )
        rank = _integer(rank_var, rank_text, 0, nodes - 1, f"this pod's node rank, 0..{nodes - 1}")
        addr = found["KUBETUNE_MASTER_ADDR"][1]
        if not addr:
            raise ConfigError(
                f"KUBETUNE_MASTER_ADDR is not set: with KUBETUNE_NODES={nodes} every pod needs node 0's address "
                "(its name under the gang's headless Service)"
            )
        port_var, port_text = found["KUBETUNE_MASTER_PORT"]
        port = _integer(port_var, port_text or str(DEFAULT_MASTER_PORT), 1, 65535, "the rendezvous port")
        return cls(nodes, rank, addr, port)


def _integer(name: str, text: str, low: int, high: int | None, what: str) -> int:
    """``text`` as an int in [low, high]; a `ConfigError` naming ``name`` otherwise.

    >>> _integer("KUBETUNE_NODE_RANK", "2", 0, 1, "the node rank")
    Traceback (most recent call last):
    ...
    kubetune_trainer.config.ConfigError: KUBETUNE_NODE_RANK='2': expected the node rank (an integer from 0 to 1)
    """
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name}={text!r}: expected {what} (an integer {bounds})")
    return value


@dataclass(frozen=True)
class TrainerEnv:
    finetunejob_name: str | None = None
    namespace: str | None = None
    run: str | None = None  # None locally; the owner records "0" then, the model card null
    output_dir: str | None = None
    metrics_port: int = 9400
    termination_log: Path = Path(TERMINATION_LOG)
    hf_token: str | None = field(default=None, repr=False)  # never in a log line
    judge_url: str | None = None
    judge_api_key: str | None = field(default=None, repr=False)
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None
    mlflow_registered_model: str | None = None
    rendezvous: Rendezvous | None = None  # a gang's pod (KUBETUNE_NODES > 1); None for one node
    dist_backend: str | None = None  # the process group's backend; None: nccl with CUDA, gloo without

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrainerEnv:
        """``TrainerEnv.from_environ(os.environ)``: once, at the start of the process.

        >>> TrainerEnv.from_environ({"KUBETUNE_RUN": "3", "KUBETUNE_METRICS_PORT": "0"}).owner_run
        '3'
        """
        port = environ.get("KUBETUNE_METRICS_PORT", "9400")
        if not port.isdigit():
            raise ConfigError(f"KUBETUNE_METRICS_PORT={port!r}: expected a port number (0 turns metrics off)")
        backend = environ.get("KUBETUNE_DIST_BACKEND") or None
        if backend is not None and backend not in BACKENDS:
            raise ConfigError(f"KUBETUNE_DIST_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
        return cls(
            finetunejob_name=environ.get("KUBETUNE_FINETUNEJOB_NAME"),
            namespace=environ.get("KUBETUNE_NAMESPACE"),
            run=environ.get("KUBETUNE_RUN"),
            output_dir=environ.get("KUBETUNE_OUTPUT_DIR"),
            metrics_port=int(port),
            termination_log=termination_log(environ),
            hf_token=environ.get("HF_TOKEN") or None,
            judge_url=environ.get("KUBETUNE_JUDGE_URL") or None,
            judge_api_key=environ.get("KUBETUNE_JUDGE_API_KEY") or None,
            mlflow_tracking_uri=environ.get("KUBETUNE_MLFLOW_TRACKING_URI") or None,
            mlflow_experiment=environ.get("KUBETUNE_MLFLOW_EXPERIMENT") or None,
            mlflow_registered_model=environ.get("KUBETUNE_MLFLOW_REGISTERED_MODEL") or None,
            rendezvous=Rendezvous.from_environ(environ),
            dist_backend=backend,
        )

    @property
    def first_node(self) -> bool:
        """This pod is node 0 of its gang (or there is no gang): the one whose rank 0 reports."""
        return self.rendezvous is None or self.rendezvous.node_rank == 0

    @property
    def owner_run(self) -> str:
        """The run number checkpoints and result.json are marked with ("0" for a local run)."""
        return self.run or "0"
