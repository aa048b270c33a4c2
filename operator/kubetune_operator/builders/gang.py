"""Builders room: what one run creates besides its spec ConfigMap, on the engine that runs it.

One node is the plain batch/v1 Job (trainer_job.py). A gang (spec.resources.nodes > 1) is one of:
indexedJob, an Indexed Job and a headless Service (plain Kubernetes); jobSet, a JobSet
(jobset.x-k8s.io/v1alpha2) around the same Indexed Job; trainJob, a Kubeflow TrainJob
(trainer.kubeflow.org/v1alpha1) on a ClusterTrainingRuntime. Pure: no API calls, no kopf.
Every pod of every engine runs the same trainer with the same KUBETUNE_* environment (gang_env).
"""

from __future__ import annotations

from typing import Any

from kubetune_operator.builders.labels import owner_reference
from kubetune_operator.builders.names import DNS_LABEL_MAX, trainer_job_name
from kubetune_operator.builders.trainer_job import (
    BAD_CONFIG_EXIT_CODE,
    COMPONENT,
    build_trainer_job,
    job_manifest,
    run_labels,
    trainer_command,
    trainer_pod_template,
)
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec, Gang

INDEXED_JOB, JOB_SET, TRAIN_JOB = "indexedJob", "jobSet", "trainJob"
#: The CRD each engine but indexedJob needs; the operator checks it is installed before it creates one.
ENGINE_CRDS = {JOB_SET: "jobsets.jobset.x-k8s.io", TRAIN_JOB: "trainjobs.trainer.kubeflow.org"}
JOBSET_API = "jobset.x-k8s.io/v1alpha2"
TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
#: The one replicated Job of a JobSet, and the Job and container Kubeflow's torch runtime calls "node".
NODE = "node"
#: The pod annotation the Job controller writes for an Indexed Job's pods: the pod's index is its node rank.
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
#: The Job condition reason and message tail of a podFailurePolicy FailJob rule (k8s pod_failure_policy.go).
POD_FAILURE_POLICY = "PodFailurePolicy"
RENDEZVOUS = "rendezvous"


def engine_of(spec: FineTuneJobSpec, settings: Settings) -> str | None:
    """None for one node (the plain Job); else spec.training.distributed.engine or the operator's default.

    >>> from kubetune_operator.specs import Gang
    >>> one = FineTuneJobSpec.unusable({}, "")
    >>> engine_of(one, Settings()) is None
    True
    >>> from dataclasses import replace
    >>> engine_of(replace(one, gang=Gang(2, None, "gloo")), Settings(training_engine="jobSet"))
    'jobSet'
    """
    if spec.gang is None:
        return None
    return spec.gang.engine or settings.training_engine


def build_run_children(
    spec: FineTuneJobSpec,
    finetunejob: dict[str, Any],
    run: int,
    settings: Settings,
    merge_sources: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """What run `run` creates besides its spec ConfigMap, in creation order (a Service before the pods
    that resolve its names). All named `trainer_job_name`, labelled `run_labels`, owned by the FineTuneJob."""
    engine = engine_of(spec, settings)
    if engine is None or spec.gang is None:
        return [build_trainer_job(spec, finetunejob, run, settings, merge_sources)]
    if engine == INDEXED_JOB:
        return [
            build_gang_service(spec.gang, finetunejob, run),
            build_gang_job(spec, spec.gang, finetunejob, run, settings, merge_sources),
        ]
    if engine == JOB_SET:
        return [build_jobset(spec, spec.gang, finetunejob, run, settings, merge_sources)]
    if engine == TRAIN_JOB:
        return [build_trainjob(spec, spec.gang, finetunejob, run, settings, merge_sources)]
    raise ValueError(
        f"spec.training.distributed.engine {engine!r}: expected one of {INDEXED_JOB}, {JOB_SET}, {TRAIN_JOB}"
    )


def engine_problems(spec: FineTuneJobSpec, engine: str | None, job_name: str) -> list[str]:
    """What the spec asks for that `engine` cannot carry (the run would silently go without it or never
    get its pods), for the run whose objects are named `job_name`.

    Every gang pod's hostname, `<job>-<index>` (JobSet, TrainJob: `<jobset>-node-0-<index>`, and the
    JobSet webhook keeps 6 more characters for pod names), must be a DNS label. A Kubeflow TrainJob
    (v1alpha1) sets the trainer's env but not envFrom, and leaves affinity, priority and deadlines to
    its runtime.

    >>> from dataclasses import replace
    >>> spec = replace(FineTuneJobSpec.unusable({}, ""), env_from=[{"secretRef": {}}], gang=Gang(2, None, None))
    >>> engine_problems(spec, "trainJob", "ft-run-1")
    ['spec.envFrom is not supported with training.distributed.engine trainJob (use indexedJob or jobSet)']
    >>> engine_problems(spec, "jobSet", "ft-run-1"), engine_problems(spec, "indexedJob", "x" * 62)[0][:40]
    ([], 'metadata.name is too long for a 2-node r')
    """
    if spec.gang is None or engine is None:
        return []
    host = (
        f"{job_name}-{spec.gang.nodes - 1}" if engine == INDEXED_JOB else f"{job_name}-{NODE}-0-{spec.gang.nodes - 1}"
    )
    room = DNS_LABEL_MAX - (0 if engine == INDEXED_JOB else len("-abcde"))
    problems = []
    if len(host) > room:
        keep = len(job_name) - (len(host) - room)
        problems.append(
            f"metadata.name is too long for a {spec.gang.nodes}-node run on training.distributed.engine {engine}: "
            f"its pods' hostnames ({host}) must fit {room} characters; keep the run's name, {job_name}, "
            f"to {keep} (a shorter FineTuneJob name)"
        )
    if engine != TRAIN_JOB:
        return problems
    asked = {
        "spec.envFrom": bool(spec.env_from),
        "spec.resources.affinity": bool(spec.resources.affinity),
        "spec.resources.priorityClassName": bool(spec.resources.priority_class_name),
        "spec.activeDeadlineSeconds": spec.active_deadline_seconds is not None,
        "spec.ttlSecondsAfterFinished": spec.ttl_seconds_after_finished is not None,
    }
    return problems + [
        f"{field} is not supported with training.distributed.engine trainJob (use indexedJob or jobSet)"
        for field, set_ in asked.items()
        if set_
    ]


def master_addr(engine: str, name: str, namespace: str) -> str:
    """Node 0's DNS name, always the full form (a pod's search path differs between clusters).

    An Indexed Job's pod is `<job>-<index>`; a JobSet's (and a TrainJob's JobSet's) `<jobset>-node-0-<index>`,
    each under a headless Service that has the Job's or the JobSet's name.

    >>> master_addr("indexedJob", "ft-run-1", "ml"), master_addr("jobSet", "ft-run-1", "ml")
    ('ft-run-1-0.ft-run-1.ml.svc', 'ft-run-1-node-0-0.ft-run-1.ml.svc')
    """
    host = f"{name}-0" if engine == INDEXED_JOB else f"{name}-{NODE}-0-0"
    return f"{host}.{name}.{namespace}.svc"


def gang_env(gang: Gang, addr: str) -> list[dict[str, Any]]:
    """How the trainer of each pod finds the others (kubetune_trainer reads these; see CONTRACT)."""
    env: list[dict[str, Any]] = [
        {"name": "KUBETUNE_NODES", "value": str(gang.nodes)},
        {"name": "KUBETUNE_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "KUBETUNE_MASTER_ADDR", "value": addr},
        {"name": "KUBETUNE_MASTER_PORT", "value": str(gang.rendezvous_port)},
    ]
    if gang.backend:
        env.append({"name": "KUBETUNE_DIST_BACKEND", "value": gang.backend})
    if gang.socket_interface:
        # Without them NCCL and gloo pick the first interface they find, which may be one pods cannot reach.
        env += [
            {"name": "NCCL_SOCKET_IFNAME", "value": gang.socket_interface},
            {"name": "GLOO_SOCKET_IFNAME", "value": gang.socket_interface},
        ]
    return env


def gang_pod_failure_policy() -> dict[str, Any]:
    """Every failure fails the gang's Job at once (backoffLimit 0): one lost pod stalls the collective, so
    the whole group restarts, never one pod. Rule 0 (bad config) is final; rule 1 (DisruptionTarget:
    eviction, preemption) tells a restart that costs no retry apart from a crash (the Job's message names
    the rule's index, which is what the gang restart and the JobSet failurePolicy read)."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": COMPONENT, "operator": "In", "values": [BAD_CONFIG_EXIT_CODE]},
            },
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_gang_service(gang: Gang, finetunejob: dict[str, Any], run: int) -> dict[str, Any]:
    """The headless Service that gives the gang's pods DNS names (`<pod hostname>.<job>.<ns>.svc`).

    publishNotReadyAddresses: node 0 must be resolvable while it starts, before anything marks it ready."""
    meta = finetunejob["metadata"]
    port = gang.rendezvous_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": trainer_job_name(meta["name"], run),
            "namespace": meta["namespace"],
            "labels": run_labels(finetunejob, run),
            "ownerReferences": [owner_reference(finetunejob)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": run_labels(finetunejob, run),
            "ports": [{"name": RENDEZVOUS, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def build_gang_job(
    spec: FineTuneJobSpec,
    gang: Gang,
    finetunejob: dict[str, Any],
    run: int,
    settings: Settings,
    merge_sources: list[dict[str, Any]] | None = None,
    engine: str = INDEXED_JOB,
) -> dict[str, Any]:
    """The Indexed Job of a gang: one pod per node, the completion index as node rank.

    backoffLimit 0: a failed pod fails the Job and the whole group restarts (the operator for indexedJob,
    the JobSet's failurePolicy for jobSet), from the last checkpoint."""
    meta = finetunejob["metadata"]
    name = trainer_job_name(meta["name"], run)
    port = {"name": RENDEZVOUS, "containerPort": gang.rendezvous_port, "protocol": "TCP"}
    env = gang_env(gang, master_addr(engine, name, meta["namespace"]))
    template = trainer_pod_template(spec, finetunejob, run, settings, merge_sources, env, [port])
    if engine == INDEXED_JOB:
        template["spec"]["subdomain"] = name  # the JobSet controller sets its own
    shape = {
        "completionMode": "Indexed",
        "completions": gang.nodes,
        "parallelism": gang.nodes,
        "backoffLimit": 0,
        "podFailurePolicy": gang_pod_failure_policy(),
    }
    return job_manifest(spec, finetunejob, run, shape, template)


def build_jobset(
    spec: FineTuneJobSpec,
    gang: Gang,
    finetunejob: dict[str, Any],
    run: int,
    settings: Settings,
    merge_sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A JobSet with one replicated Job, `node`: the gang's Indexed Job. The JobSet controller makes the
    headless Service and restarts the whole set: preemption freely, a crash up to spec.backoffLimit times."""
    job = build_gang_job(spec, gang, finetunejob, run, settings, merge_sources, engine=JOB_SET)
    job_spec = job["spec"]
    suspend = job_spec.pop("suspend")  # the JobSet suspends its Jobs itself
    ttl = job_spec.pop("ttlSecondsAfterFinished", None)  # a child Job removed early would read as lost
    body: dict[str, Any] = {
        "suspend": suspend,
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {"maxRestarts": spec.backoff_limit, "rules": _jobset_failure_rules()},
        "replicatedJobs": [
            {
                "name": NODE,
                "replicas": 1,
                "template": {"metadata": {"labels": job["metadata"]["labels"]}, "spec": job_spec},
            }
        ],
    }
    if ttl is not None:
        body["ttlSecondsAfterFinished"] = ttl
    return {"apiVersion": JOBSET_API, "kind": "JobSet", "metadata": job["metadata"], "spec": body}


def _jobset_failure_rules() -> list[dict[str, Any]]:
    """The first rule that matches the failed Job wins; none matching is a counted restart (RestartJobSet)."""

    def rule_at(index: int) -> list[str]:
        return [f"matching FailJob rule at index {index}$"]

    return [
        {
            "name": "BadConfig",  # exit 2 (gang_pod_failure_policy rule 0): a retry runs into the same error
            "action": "FailJobSet",
            "onJobFailureReasons": [POD_FAILURE_POLICY],
            "onJobFailureMessagePatterns": rule_at(0),
        },
        {
            "name": "Preempted",  # rule 1: the pod was evicted or preempted, not at fault
            "action": "RestartJobSetAndIgnoreMaxRestarts",
            "onJobFailureReasons": [POD_FAILURE_POLICY],
            "onJobFailureMessagePatterns": rule_at(1),
        },
        {"name": "Deadline", "action": "FailJobSet", "onJobFailureReasons": ["DeadlineExceeded"]},
    ]


def build_trainjob(
    spec: FineTuneJobSpec,
    gang: Gang,
    finetunejob: dict[str, Any],
    run: int,
    settings: Settings,
    merge_sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Kubeflow TrainJob on Settings.trainjob_runtime (a ClusterTrainingRuntime, torch by default).

    The runtime owns the pod (its security context, restart policy, failure policy); the TrainJob gives
    the trainer's image, command, env and resources, and overrides volumes, mounts, service account and
    placement through podSpecOverrides, which is all trainer.kubeflow.org/v1alpha1 (v2.0.0) lets it set
    (what it cannot carry is refused before: engine_problems)."""
    meta = finetunejob["metadata"]
    name = trainer_job_name(meta["name"], run)
    pod = trainer_pod_template(
        spec, finetunejob, run, settings, merge_sources, gang_env(gang, master_addr(TRAIN_JOB, name, meta["namespace"]))
    )["spec"]
    container = pod["containers"][0]
    override: dict[str, Any] = {
        "targetJobs": [{"name": NODE}],
        "containers": [{"name": NODE, "volumeMounts": container["volumeMounts"]}],
        "volumes": pod["volumes"],
        "serviceAccountName": pod["serviceAccountName"],
    }
    for key in ("nodeSelector", "tolerations"):
        if key in pod:
            override[key] = pod[key]
    return {
        "apiVersion": TRAINJOB_API,
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": run_labels(finetunejob, run),
            "ownerReferences": [owner_reference(finetunejob)],
        },
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": settings.trainjob_runtime,
            },
            "suspend": spec.suspend,
            "labels": run_labels(finetunejob, run),  # onto the TrainJob's JobSet and Jobs
            "trainer": {
                "image": container["image"],
                "command": trainer_command(),
                "env": container["env"],
                "numNodes": gang.nodes,
                "resourcesPerNode": container["resources"],
            },
            "podSpecOverrides": [override],
        },
    }
