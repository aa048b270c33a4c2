"""What a kubelet and the cluster's DNS put into a container's environment, for the local executor.

Two things a pod of a gang relies on: env ``valueFrom.fieldRef`` (the pod's own name, labels,
annotations: the Job controller gives every Indexed Job pod ``JOB_COMPLETION_INDEX`` that way, and the
operator a gang's node rank), and node 0's DNS name, ``<host>.<service>.<namespace>.svc``, which cluster
DNS answers for a headless Service. All pods here share one loopback, so such a name stands for
127.0.0.1. Pure functions; the one API read (is this Service headless?) is the caller's, passed in.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any

HOST_IP = "10.250.0.1"
LOOPBACK = "127.0.0.1"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_POD_DNS = re.compile(rf"(?P<host>{_LABEL})\.(?P<service>{_LABEL})\.(?P<namespace>{_LABEL})\.svc(\.cluster\.local)?")
_KEYED = re.compile(r"metadata\.(?P<field>labels|annotations)\['(?P<key>[^']+)'\]")


def pod_ip(name: str) -> str:
    """The bookkeeping address the executor reports for a pod: the same for the same name, whichever
    executor reports it (EndpointSlices refuse loopback; traffic uses the executor's targets).

    >>> pod_ip("tune-1-0") == pod_ip("tune-1-0") != pod_ip("tune-1-1")
    True
    """
    ip = zlib.crc32(name.encode())
    return f"10.250.{(ip >> 8) % 250}.{ip % 250 + 1}"


def field_ref(pod: Any, path: str) -> str:
    """The value of ``fieldRef.fieldPath`` for ``pod`` (a kubernetes client V1Pod), as a kubelet gives it.

    Every path the apiserver accepts for env; a label or annotation the pod does not have is "".

    >>> from kubernetes.client import V1ObjectMeta, V1Pod
    >>> index = "batch.kubernetes.io/job-completion-index"
    >>> pod = V1Pod(metadata=V1ObjectMeta(name="j-1", namespace="ml", annotations={index: "1"}))
    >>> field_ref(pod, f"metadata.annotations['{index}']"), field_ref(pod, "metadata.name")
    ('1', 'j-1')
    >>> field_ref(pod, "metadata.labels['absent']")
    ''
    """
    meta, spec = pod.metadata, pod.spec
    keyed = _KEYED.fullmatch(path)
    if keyed:
        values = (meta.labels if keyed["field"] == "labels" else meta.annotations) or {}
        return str(values.get(keyed["key"], ""))
    simple: dict[str, Callable[[], Any]] = {
        "metadata.name": lambda: meta.name,
        "metadata.namespace": lambda: meta.namespace,
        "metadata.uid": lambda: meta.uid,
        "spec.nodeName": lambda: spec.node_name,
        "spec.serviceAccountName": lambda: spec.service_account_name,
        "status.hostIP": lambda: HOST_IP,
        "status.hostIPs": lambda: HOST_IP,
        "status.podIP": lambda: pod_ip(meta.name),
        "status.podIPs": lambda: pod_ip(meta.name),
    }
    if path not in simple:
        raise ValueError(f"fieldRef.fieldPath {path!r} is not one a kubelet resolves for env")
    return str(simple[path]() or "")


def cluster_dns(value: str, headless: Callable[[str, str], bool]) -> str:
    """An env value that is exactly a pod's DNS name under a headless Service, ``<host>.<service>.
    <namespace>.svc`` (or ``.svc.cluster.local``), becomes 127.0.0.1; any other value stays as it is.
    ``headless(namespace, service)``: whether that Service exists with clusterIP None.

    >>> cluster_dns("tune-0.tune.ml.svc", lambda ns, svc: (ns, svc) == ("ml", "tune"))
    '127.0.0.1'
    >>> [cluster_dns(v, lambda ns, svc: True) for v in ("tune-0.tune.ml.svc.cluster.local", "http://a.b.c.svc")]
    ['127.0.0.1', 'http://a.b.c.svc']
    >>> cluster_dns("tune-0.other.ml.svc", lambda ns, svc: svc == "tune")
    'tune-0.other.ml.svc'
    """
    found = _POD_DNS.fullmatch(value)
    if found and headless(found["namespace"], found["service"]):
        return LOOPBACK
    return value
