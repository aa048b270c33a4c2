"""Two nodes train as one: an Indexed Job of 2 pods, torchrun's static rendezvous on pod 0, gloo on loopback.

Real parts: the apiserver, the Job controller (which makes the indexed pods and their completion-index
annotation), the scheduler, and the local executor running the real trainer as two processes. The Job
is written here by hand in the gang's shape of CONTRACT15 (the operator's builder for it is built
elsewhere): the single-node builders' ConfigMap and Job, turned Indexed (completions = parallelism = 2,
subdomain = a headless Service of the Job's name) with the gang's environment. The node rank comes from
a fieldRef to the completion index and node 0's DNS name resolves through the executor's cluster-DNS
stand-in, so each trainer finds its place the way it would in a cluster.

Each pod writes its output on a disk of its own (an emptyDir), as pods on different nodes do: that is
how the test sees that node 0 alone wrote checkpoints, the artifact and result.json. The run's loss is
compared with one process that sees the same examples per step (gradientAccumulationSteps 2).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_dev.processes import free_port
from kubetune_operator.builders.names import trainer_job_name
from kubetune_operator.builders.trainer_job import build_spec_configmap, build_trainer_job, run_labels
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec
from tests.k8s.conftest import wait_for
from tests.support.gang_specs import tiny_gang_spec

pytestmark = pytest.mark.slow
NODE = "local-gang"
INDEX = "batch.kubernetes.io/job-completion-index"
OUT = "/var/kubetune/out"  # the emptyDir each pod writes its output in
STEPS = 4


def gang_spec(tiny: Path) -> dict[str, Any]:
    training = {
        "maxSteps": STEPS,
        "gradientAccumulationSteps": 1,  # x 2 nodes: 2 micro-batches per step
        "evalSteps": STEPS,
        "loggingSteps": 1,
        "checkpointSteps": 2,
    }
    return tiny_gang_spec(tiny, NODE, "/models/gang", training)  # the output: each pod's own disk, below


def gang(job: dict[str, Any], labels: dict[str, str], nodes: int, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The single-node Job as CONTRACT15's gang (engine indexedJob), and its headless Service."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    job = copy.deepcopy(job)
    job["metadata"].pop("ownerReferences")  # no FineTuneJob here: the garbage collector would delete the Job
    spec = job["spec"]
    spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes, backoffLimit=0)
    spec["podFailurePolicy"]["rules"][1]["action"] = "FailJob"  # the operator restarts the whole group
    pod = spec["template"]["spec"]
    pod["subdomain"] = name
    pod["volumes"].append({"name": "out", "emptyDir": {}})
    (container,) = pod["containers"]
    container["volumeMounts"].append({"name": "out", "mountPath": OUT})
    rank = {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}}
    env = {e["name"]: e for e in container["env"]}
    for var in [
        {"name": "KUBETUNE_NODES", "value": str(nodes)},
        {"name": "KUBETUNE_NODE_RANK", "valueFrom": rank},
        {"name": "KUBETUNE_MASTER_ADDR", "value": f"{name}-0.{name}.{ns}.svc"},
        {"name": "KUBETUNE_MASTER_PORT", "value": str(port)},
        {"name": "KUBETUNE_DIST_BACKEND", "value": "gloo"},
        {"name": "GLOO_SOCKET_IFNAME", "value": "lo"},
        # The test's own: one disk per pod; no metrics server (the pods share one host's ports here).
        {"name": "KUBETUNE_OUTPUT_DIR", "value": f"{OUT}/run-1"},
        {"name": "KUBETUNE_METRICS_PORT", "value": "0"},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]:
        env[var["name"]] = var
    container["env"] = list(env.values())
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port}],
        },
    }
    return job, service


def terminated(pod: Any) -> Any:
    return next((cs.state.terminated for cs in pod.status.container_statuses or [] if cs.state.terminated), None)


def test_two_nodes_train_like_one_process_with_twice_the_accumulation(k8s, executor, tmp_path, request):
    from kubetune_trainer.tiny_model import ensure_tiny_model

    ftj = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "gang", "namespace": k8s.ns, "uid": "uid-gang"},
        "spec": gang_spec(ensure_tiny_model(tmp_path / "tiny")),
    }
    configmap = build_spec_configmap(ftj, 1)
    configmap["metadata"].pop("ownerReferences")
    single = build_trainer_job(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, 1, Settings())
    master_port = free_port()
    job, service = gang(single, run_labels(ftj, 1), nodes=2, port=master_port)
    name = trainer_job_name("gang", 1)
    k8s.core.create_namespaced_config_map(k8s.ns, configmap)
    k8s.core.create_namespaced_service(k8s.ns, service)
    k8s.batch.create_namespaced_job(k8s.ns, job)
    one = single_process(configmap, tmp_path)
    request.addfinalizer(one.kill)  # a no-op once it has ended

    def pods_done() -> list[Any]:
        pods = k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"job-name={name}").items
        if any(p.status.phase == "Failed" for p in pods):
            logs = {p.metadata.name: (executor.workdir / k8s.ns / p.metadata.name / "container.log") for p in pods}
            pytest.fail("\n".join(f"--- {n} ---\n{f.read_text()[-3000:]}" for n, f in logs.items() if f.exists()))
        return pods if len(pods) == 2 and all(p.status.phase == "Succeeded" for p in pods) else []

    pods = wait_for(pods_done, timeout=300, what="both pods of the gang to succeed", every=1)
    by_rank = {int(p.metadata.annotations[INDEX]): p for p in pods}
    assert sorted(by_rank) == [0, 1]
    job_status = wait_for(
        lambda: (s := k8s.batch.read_namespaced_job_status(name, k8s.ns).status).succeeded == 2 and s,
        what="the Job controller to count both pods",
    )
    assert job_status.completed_indexes == "0,1"

    disks = {r: executor.workdir / k8s.ns / p.metadata.name / "volumes" / "out" / "run-1" for r, p in by_rank.items()}
    logs = {r: (executor.workdir / k8s.ns / p.metadata.name / "container.log").read_text() for r, p in by_rank.items()}
    # Each pod found its rank (fieldRef) and node 0 (the headless Service's name, loopback here).
    for r in (0, 1):
        assert (
            f"node {r} of 2: launching 1 training processes under torchrun (rendezvous 127.0.0.1:{master_port})"
            in logs[r]
        ), logs[r][-3000:]
    # Node 0 alone wrote the output: result, artifact, checkpoints, termination message.
    result = json.loads((disks[0] / "result.json").read_text())
    assert result["phase"] == "Succeeded" and result["worldSize"] == 2 and result["steps"] == STEPS
    assert (disks[0] / "artifact" / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (disks[0] / "checkpoints").glob("step-*")) == ["step-2", "step-4"]
    message = json.loads(terminated(by_rank[0]).message)
    assert message["phase"] == "Succeeded" and message["metrics"] == result["metrics"]
    written_by_1 = sorted(str(p.relative_to(disks[1])) for p in disks[1].rglob("*") if p.is_file())
    assert not [p for p in written_by_1 if not p.startswith("data/") and p != "checkpoints/owner.json"], written_by_1
    assert (disks[1] / "data" / "split.json").exists()  # its own copy of the splits, on its own disk
    assert not (executor.workdir / k8s.ns / by_rank[1].metadata.name / "termination-log").read_text()

    # One process, the same examples per step: 2 micro-batches accumulated instead of 1 on each of 2 nodes.
    assert one.wait(timeout=300) == 0, (tmp_path / "one.log").read_text()[-3000:]
    one_result = json.loads((tmp_path / "one" / "result.json").read_text())
    assert one_result["steps"] == result["steps"] == STEPS and one_result["worldSize"] == 1
    card = json.loads((disks[0] / "artifact" / "model_card.json").read_text())["training"]
    one_card = json.loads((tmp_path / "one" / "artifact" / "model_card.json").read_text())["training"]
    gang_loss, one_loss = card["finalTrainLoss"], one_card["finalTrainLoss"]
    print(f"final train loss: 2 nodes {gang_loss!r}, 1 process {one_loss!r}, difference {gang_loss - one_loss:.3g}")
    # Measured: 6.5384352 against 6.5384350 (2.4e-7 apart, 4e-8 relative): the same sums in another order.
    assert gang_loss == pytest.approx(one_loss, rel=1e-5)
    assert result["metrics"]["evalLoss"] == pytest.approx(one_result["metrics"]["evalLoss"], rel=1e-5)


def single_process(configmap: dict[str, Any], tmp_path: Path) -> subprocess.Popen[bytes]:
    """The same spec in one trainer process with gradientAccumulationSteps 2, started now (it runs while
    the gang's pods start)."""
    frozen = yaml.safe_load(configmap["data"]["finetunejob.yaml"])
    frozen["spec"]["training"]["gradientAccumulationSteps"] = 2
    spec = tmp_path / "one.yaml"
    spec.write_text(yaml.safe_dump(frozen))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    environ.update(KUBETUNE_METRICS_PORT="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "kubetune_trainer", "train", "--spec", str(spec), "--output", str(tmp_path / "one")]
    with open(tmp_path / "one.log", "wb") as log:
        return subprocess.Popen(cmd, env=environ, stdout=log, stderr=subprocess.STDOUT)
