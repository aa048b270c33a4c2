"""What the local executor gives a container that a kubelet and cluster DNS would: fieldRef values and
a headless Service's pod names (loopback here). The apiserver-backed path runs in
tests/k8s/test_multinode_gang.py, where an Indexed Job's two pods find each other this way."""

from __future__ import annotations

import doctest

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodSpec

from kubetune_dev.local_executor import cluster_env, containers
from kubetune_dev.local_executor.cluster_env import cluster_dns, field_ref

INDEX = "batch.kubernetes.io/job-completion-index"


@pytest.mark.parametrize("module", [cluster_env, containers])
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def indexed_job_pod() -> V1Pod:
    """A pod as the Job controller makes one for index 1 of an Indexed Job."""
    meta = V1ObjectMeta(
        name="tune-1-1-x7k2p",
        namespace="ml",
        uid="u-1",
        labels={"job-name": "tune-1", INDEX: "1"},
        annotations={INDEX: "1"},
    )
    spec = V1PodSpec(containers=[], node_name="local", service_account_name="kubetune-trainer")
    return V1Pod(metadata=meta, spec=spec)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (f"metadata.annotations['{INDEX}']", "1"),  # what JOB_COMPLETION_INDEX and KUBETUNE_NODE_RANK read
        (f"metadata.labels['{INDEX}']", "1"),
        ("metadata.labels['job-name']", "tune-1"),
        ("metadata.annotations['absent']", ""),
        ("metadata.name", "tune-1-1-x7k2p"),
        ("metadata.namespace", "ml"),
        ("metadata.uid", "u-1"),
        ("spec.nodeName", "local"),
        ("spec.serviceAccountName", "kubetune-trainer"),
        ("status.hostIP", cluster_env.HOST_IP),
        ("status.podIP", cluster_env.pod_ip("tune-1-1-x7k2p")),
    ],
)
def test_field_refs_resolve_as_a_kubelet_resolves_them(path, value) -> None:
    assert field_ref(indexed_job_pod(), path) == value


def test_a_field_path_no_kubelet_knows_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"spec\.containers"):
        field_ref(indexed_job_pod(), "spec.containers")


def test_only_a_pod_name_under_a_headless_service_becomes_loopback() -> None:
    services = {("ml", "tune-1"): True, ("ml", "web"): False}  # (namespace, name) -> headless

    def headless(ns: str, name: str) -> bool:
        return services.get((ns, name), False)

    assert cluster_dns("tune-1-0.tune-1.ml.svc", headless) == "127.0.0.1"
    assert cluster_dns("tune-1-0.tune-1.ml.svc.cluster.local", headless) == "127.0.0.1"
    for unchanged in (
        "tune-1-0.web.ml.svc",  # a Service with a cluster IP: its pods have no names of their own
        "tune-1-0.tune-1.other.svc",  # no such Service in that namespace
        "tune-1.ml.svc",  # the Service's own name, not a pod's
        "http://tune-1-0.tune-1.ml.svc:8000",  # only the exact form; a URL is left alone
        "tune-1-0.tune-1.ml.svc.example.com",
        "29500",
    ):
        assert cluster_dns(unchanged, headless) == unchanged
