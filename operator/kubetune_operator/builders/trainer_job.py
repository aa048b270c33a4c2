"""Manifests for one FineTuneJob run: the spec ConfigMap and the batch/v1 Job that trains.

The trainer pod template and the Job around it are built apart, so a multi-node run's Indexed Job, JobSet
and TrainJob (gang.py) carry the very pod a one-node run has, plus how its nodes find each other."""

from __future__ import annotations

from typing import Any

import yaml

from kubetune_api.tracking import MlflowTracking
from kubetune_operator import api
from kubetune_operator.builders.labels import child_labels, label_value, owner_reference
from kubetune_operator.builders.names import spec_configmap_name, trainer_job_name
from kubetune_operator.builders.resources import container_resources
from kubetune_operator.builders.security import container_security_context, home_env, pod_security_context
from kubetune_operator.builders.volumes import claim_of, pvc_volumes
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec, MlflowTarget

COMPONENT = "trainer"
#: The trainer's exit status for a bad spec or bad data (kubetune_trainer.cli): final, never retried.
BAD_CONFIG_EXIT_CODE = 2


def run_labels(finetunejob: dict[str, Any], run: int) -> dict[str, str]:
    name = finetunejob["metadata"]["name"]
    return child_labels(name, COMPONENT, {api.LABEL_FINETUNEJOB: label_value(name), api.LABEL_RUN: str(run)})


def build_spec_configmap(
    finetunejob: dict[str, Any],
    run: int,
    *,
    init_artifact: dict[str, Any] | None = None,
    merge_sources: list[dict[str, Any]] | None = None,
    captures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The FineTuneJob as the trainer reads it: the spec of this run, frozen in a ConfigMap.

    ``init_artifact``: for spec.initFrom.fineTuneJobRef, the parent's artifact this run starts from
    (`lineage.ParentArtifact.for_trainer`), frozen beside the spec so a retried pod reads the same one.
    ``merge_sources`` (method merge): the artifacts the operator resolved the sources to, frozen with the
    spec as ``status.mergeSources`` (kubetune_trainer.config.parse_job reads them from there).
    ``captures``: for spec.dataset.captures, the location the operator resolved and the run's start time
    (`captures.CaptureSource.for_trainer`), frozen the same way."""
    meta = finetunejob["metadata"]
    frozen: dict[str, Any] = {
        "apiVersion": finetunejob["apiVersion"],
        "kind": finetunejob["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
        "spec": finetunejob["spec"],
        **({"initArtifact": init_artifact} if init_artifact else {}),
        **({"captures": captures} if captures else {}),
    }
    if merge_sources is not None:
        frozen["status"] = {"mergeSources": merge_sources}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": spec_configmap_name(meta["name"], run),
            "namespace": meta["namespace"],
            "labels": run_labels(finetunejob, run),
            "ownerReferences": [owner_reference(finetunejob)],
        },
        "data": {api.SPEC_FILE: yaml.safe_dump(frozen, sort_keys=False)},
    }


def build_trainer_job(
    spec: FineTuneJobSpec,
    finetunejob: dict[str, Any],
    run: int,
    settings: Settings,
    merge_sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job for run `run` of `finetunejob` (its metadata; its spec is read once, as `spec`).

    `merge_sources`: method merge's resolved sources, whose claims the pod mounts read-only too."""
    template = trainer_pod_template(spec, finetunejob, run, settings, merge_sources)
    shape = {"backoffLimit": spec.backoff_limit, "completions": 1, "parallelism": 1}
    return job_manifest(spec, finetunejob, run, {**shape, "podFailurePolicy": pod_failure_policy()}, template)


def job_manifest(
    spec: FineTuneJobSpec, finetunejob: dict[str, Any], run: int, shape: dict[str, Any], template: dict[str, Any]
) -> dict[str, Any]:
    """A trainer Job around `template`: `shape` says how many pods and how failures count; the rest
    (suspend, deadline, TTL, names, owner) is the same for a one-node Job and a gang's Indexed Job."""
    meta = finetunejob["metadata"]
    job_spec: dict[str, Any] = {**shape, "suspend": spec.suspend, "template": template}
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": trainer_job_name(meta["name"], run),
            "namespace": meta["namespace"],
            "labels": run_labels(finetunejob, run),
            "ownerReferences": [owner_reference(finetunejob)],
        },
        "spec": job_spec,
    }


def trainer_pod_template(
    spec: FineTuneJobSpec,
    finetunejob: dict[str, Any],
    run: int,
    settings: Settings,
    merge_sources: list[dict[str, Any]] | None = None,
    extra_env: list[dict[str, Any]] | None = None,
    extra_ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The trainer pod of run `run`: one container, the spec ConfigMap and claims mounted, the run labels.

    `extra_env` / `extra_ports`: what a gang adds to the container (how the nodes find each other)."""
    meta = finetunejob["metadata"]
    extra = [str(s["uri"]) for s in merge_sources or []]
    volumes, mounts = _volumes(spec, spec_configmap_name(meta["name"], run), settings, extra)
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": trainer_command(),
        "env": _env(finetunejob, spec, run, settings) + (extra_env or []),
        # Secrets and ConfigMaps by reference (S3 keys, AWS_ENDPOINT_URL, proxies): never copied here.
        **({"envFrom": spec.env_from} if spec.env_from else {}),
        "ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port, "protocol": "TCP"}]
        + (extra_ports or []),
        "resources": container_resources(
            spec.resources.cpu, spec.resources.memory, spec.resources.gpus, spec.resources.gpu_resource_name
        ),
        "volumeMounts": mounts,
        # The trainer writes its result JSON here; the operator reads it from the pod status.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy needs it
        # SIGTERM -> the trainer checkpoints at the next step boundary and exits 143; then SIGKILL.
        "terminationGracePeriodSeconds": settings.trainer_termination_grace_seconds,
        "serviceAccountName": spec.service_account_name or settings.trainer_service_account,
        "containers": [container],
        "volumes": volumes,
        "securityContext": pod_security_context(),
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = spec.resources.node_selector
    if spec.resources.tolerations:
        pod_spec["tolerations"] = spec.resources.tolerations
    if spec.resources.affinity:
        pod_spec["affinity"] = spec.resources.affinity
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    return {"metadata": {"labels": run_labels(finetunejob, run)}, "spec": pod_spec}


def trainer_command() -> list[str]:
    return ["python", "-m", "kubetune_trainer", "train", "--spec", f"{api.SPEC_MOUNT_DIR}/{api.SPEC_FILE}"]


def pod_failure_policy() -> dict[str, Any]:
    """A bad spec fails the Job at once; an evicted or preempted pod is retried without using up backoffLimit.

    Rules apply in order, the first match wins: an exit 2 is final even from a pod that was also being
    evicted. `DisruptionTarget` is the condition the apiserver (Eviction API), the scheduler (preemption)
    and the kubelet (node pressure, graceful node shutdown) put on a pod they end.
    """
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": COMPONENT, "operator": "In", "values": [BAD_CONFIG_EXIT_CODE]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def resolve_uri(uri: str, settings: Settings) -> str:
    """Where a location is seen from inside the trainer pod.

    >>> resolve_uri("pvc://models/llama", Settings())
    '/mnt/pvc/models/llama'
    """
    if uri.startswith("pvc://"):
        return f"{settings.pvc_mount_root}/{uri.removeprefix('pvc://')}"
    return uri


def _env(finetunejob: dict[str, Any], spec: FineTuneJobSpec, run: int, settings: Settings) -> list[dict[str, Any]]:
    meta = finetunejob["metadata"]
    output = spec.output_uri.rstrip("/")
    env: list[dict[str, Any]] = [
        {"name": "KUBETUNE_FINETUNEJOB_NAME", "value": meta["name"]},
        {"name": "KUBETUNE_NAMESPACE", "value": meta["namespace"]},
        {"name": "KUBETUNE_RUN", "value": str(run)},
        {"name": "KUBETUNE_OUTPUT_DIR", "value": resolve_uri(f"{output}/run-{run}", settings)},
        {"name": "KUBETUNE_PVC_ROOT", "value": settings.pvc_mount_root},
        {"name": "KUBETUNE_METRICS_PORT", "value": str(settings.trainer_metrics_port)},
        # Hub downloads go to the pod's scratch space, never to the read-only root filesystem.
        {"name": "HF_HOME", "value": "/tmp/hf"},
        home_env(),
    ]
    if spec.token_secret:
        # By reference only: the token never appears in the Job, the status, logs or events.
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": spec.token_secret.name, "key": spec.token_secret.key}},
            }
        )
    if spec.judge_url:  # spec.evaluation.judge.modelDeploymentRef, resolved (a url in the spec needs nothing)
        env.append({"name": "KUBETUNE_JUDGE_URL", "value": spec.judge_url})
    if spec.judge_secret:
        s = spec.judge_secret
        env.append({"name": "KUBETUNE_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": s.name, "key": s.key}}})
    return env + tracking_env(spec, meta["namespace"], meta["name"], settings)


#: Keys of spec.tracking.mlflow.credentialsSecretRef's Secret, and the variables MLflow's client reads.
MLFLOW_CREDENTIALS = (
    ("username", "MLFLOW_TRACKING_USERNAME"),
    ("password", "MLFLOW_TRACKING_PASSWORD"),
    ("token", "MLFLOW_TRACKING_TOKEN"),
)


def tracking_target(spec: FineTuneJobSpec, namespace: str, name: str, settings: Settings) -> MlflowTarget | None:
    """spec.tracking.mlflow with the operator's default URI and the API's default names filled in; None when
    the run is not tracked (no spec.tracking URI and no KUBETUNE_MLFLOW_TRACKING_URI).

    >>> tracking_target(FineTuneJobSpec.unusable({}, ""), "ns", "job", Settings(mlflow_tracking_uri="http://m:5000"))
    MlflowTarget(tracking_uri='http://m:5000', experiment='ns/job', registered_model='job', credentials_secret=None)
    """
    t = spec.mlflow or MlflowTarget(None, None, None, None)
    uri = t.tracking_uri or settings.mlflow_tracking_uri
    if not uri:
        return None
    return MlflowTarget(
        uri,
        MlflowTracking.experiment_for(t.experiment, namespace, name),
        MlflowTracking.registered_model_for(t.registered_model, name),
        t.credentials_secret,
    )


def tracking_env(spec: FineTuneJobSpec, namespace: str, name: str, settings: Settings) -> list[dict[str, Any]]:
    """The trainer's MLflow variables: where to log, under which names, and the credentials by reference."""
    target = tracking_target(spec, namespace, name, settings)
    if target is None:
        return []
    env: list[dict[str, Any]] = [
        {"name": "KUBETUNE_MLFLOW_TRACKING_URI", "value": target.tracking_uri},
        {"name": "KUBETUNE_MLFLOW_EXPERIMENT", "value": target.experiment},
        {"name": "KUBETUNE_MLFLOW_REGISTERED_MODEL", "value": target.registered_model},
    ]
    if target.credentials_secret:
        # optional: a Secret holds username + password or a token, not all three; the pod starts either way.
        env += [
            {
                "name": var,
                "valueFrom": {"secretKeyRef": {"name": target.credentials_secret, "key": key, "optional": True}},
            }
            for key, var in MLFLOW_CREDENTIALS
        ]
    return env


def _volumes(
    spec: FineTuneJobSpec, configmap: str, settings: Settings, extra_uris: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": configmap}},
        {"name": "tmp", "emptyDir": {}},
        # PyTorch data loaders and NCCL need more shared memory than a container's 64Mi default.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": api.SPEC_MOUNT_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    output_claim = claim_of(spec.output_uri) if spec.output_uri.startswith("pvc://") else None
    claim_volumes, claim_mounts = pvc_volumes(spec.pvc_uris() + extra_uris, settings.pvc_mount_root, output_claim)
    volumes += claim_volumes
    mounts += claim_mounts
    return volumes, mounts
