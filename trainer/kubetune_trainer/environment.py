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
)
#: The variables `kubetune_trainer.uris` reads (shared with the serving fetcher, so not passed down).
READ_BY_URIS = ("KUBETUNE_PVC_ROOT", "KUBETUNE_CACHE", "KUBETUNE_HF_ROOT")
#: Set by tests and the development executor, never by the operator's Job.
LOCAL_ONLY = ("KUBETUNE_TERMINATION_LOG", "KUBETUNE_CACHE", "KUBETUNE_HF_ROOT")


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

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrainerEnv:
        """``TrainerEnv.from_environ(os.environ)``: once, at the start of the process.

        >>> TrainerEnv.from_environ({"KUBETUNE_RUN": "3", "KUBETUNE_METRICS_PORT": "0"}).owner_run
        '3'
        """
        port = environ.get("KUBETUNE_METRICS_PORT", "9400")
        if not port.isdigit():
            raise ValueError(f"KUBETUNE_METRICS_PORT={port!r}: expected a port number (0 turns metrics off)")
        return cls(
            finetunejob_name=environ.get("KUBETUNE_FINETUNEJOB_NAME"),
            namespace=environ.get("KUBETUNE_NAMESPACE"),
            run=environ.get("KUBETUNE_RUN"),
            output_dir=environ.get("KUBETUNE_OUTPUT_DIR"),
            metrics_port=int(port),
            termination_log=Path(environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG)),
            hf_token=environ.get("HF_TOKEN") or None,
            judge_url=environ.get("KUBETUNE_JUDGE_URL") or None,
            judge_api_key=environ.get("KUBETUNE_JUDGE_API_KEY") or None,
            mlflow_tracking_uri=environ.get("KUBETUNE_MLFLOW_TRACKING_URI") or None,
            mlflow_experiment=environ.get("KUBETUNE_MLFLOW_EXPERIMENT") or None,
            mlflow_registered_model=environ.get("KUBETUNE_MLFLOW_REGISTERED_MODEL") or None,
        )

    @property
    def owner_run(self) -> str:
        """The run number checkpoints and result.json are marked with ("0" for a local run)."""
        return self.run or "0"
