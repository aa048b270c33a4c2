"""spec.tracking of a FineTuneJob: where the trainer logs the run and registers its artifact (MLflow).

Room: the API package. The derived defaults (experiment = namespace/name, registered model = name) are
written here once, in `MlflowTracking.experiment_for` and `registered_model_for`; the operator's
builder and the trainer both call them. The tracking URI may also come from the operator's default
(KUBETUNE_MLFLOW_TRACKING_URI) when the spec names none.
"""

from __future__ import annotations

from pydantic import Field

from kubetune_api.rules import ApiModel

TRACKING_URI = "^https?://[^/?#]+(/.*)?$"
# MLflow's own limits: experiment names 500 characters, registered model names 256 (and no '/' in those).
MODEL_NAME = "^[A-Za-z0-9][A-Za-z0-9._-]*$"


class CredentialsRef(ApiModel):
    name: str = Field(
        max_length=253,
        description=(
            "A Secret in the FineTuneJob's namespace with keys username and password (basic auth), or token "
            "(a bearer token); passed to the trainer by reference as MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN."
        ),
    )


class MlflowTracking(ApiModel):
    tracking_uri: str | None = Field(
        None,
        max_length=1024,
        pattern=TRACKING_URI,
        description="The MLflow tracking server, http(s)://host[:port][/path]; the operator's default when unset.",
    )
    experiment: str | None = Field(
        None, max_length=500, min_length=1, description="MLflow experiment (default <namespace>/<name>)."
    )
    registered_model: str | None = Field(
        None,
        max_length=256,
        pattern=MODEL_NAME,
        description=(
            "Registered model a successful run's artifact becomes a version of (default the FineTuneJob's name); "
            "a ModelDeployment serving it moves the version's alias production on promotion."
        ),
    )
    credentials_secret_ref: CredentialsRef | None = None

    @staticmethod
    def experiment_for(experiment: str | None, namespace: str | None, name: str) -> str:
        """The experiment a run logs to: spec.tracking.mlflow.experiment, else <namespace>/<name>.

        >>> MlflowTracking.experiment_for(None, "team-a", "support")
        'team-a/support'
        """
        return experiment or f"{namespace or 'default'}/{name}"

    @staticmethod
    def registered_model_for(registered_model: str | None, name: str) -> str:
        return registered_model or name


class Tracking(ApiModel):
    mlflow: MlflowTracking = Field(
        default_factory=MlflowTracking,
        description=(
            "Log params, per-step metrics, the eval report, the model card and the loss/metrics PNGs to MLflow, "
            "and register a successful run's artifact. Tracking failures never fail training: they are retried, "
            "then reported in status.tracking.warning."
        ),
    )
