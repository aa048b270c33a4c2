"""The operator's only door to the Kubernetes API: create, apply, get, patch, delete, list, events.

Create treats 409 (already there) as success and delete treats 404 (already gone) as success, so
every caller is idempotent and safe to re-run after a crash. The serving children are written with
server-side apply under one field manager, and only when what we would apply differs from what we
applied last (a hash of the manifest, kept in an annotation): an idle resource costs reads, not writes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_operator import api

FIELD_MANAGER = "kubetune-operator"
APPLY_PATCH = "application/apply-patch+yaml"
#: A digest of the manifest last applied to a child (the apiserver adds defaults to what it stores,
#: so comparing the stored object with the manifest would see differences that are none).
APPLIED_HASH = f"{api.GROUP}/applied-hash"


#: The training engines' kinds the operator creates (builders/gang.py) and their resource names.
ENGINE_PLURALS = {"JobSet": "jobsets", "TrainJob": "trainjobs"}


def applied_hash(manifest: dict[str, Any]) -> str:
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(manifest)
    body["metadata"].setdefault("annotations", {})[APPLIED_HASH] = applied_hash(manifest)
    return body


def unchanged(manifest: dict[str, Any], observed: dict[str, Any]) -> bool:
    """True when `observed` was applied from `manifest` and still has its size: replicas are also
    scaled by a plain patch (a track giving pods to the other), so they are compared as they are.

    >>> m = {"metadata": {"name": "a"}, "spec": {"replicas": 2}}
    >>> unchanged(m, with_applied_hash(m)), unchanged(m, {**with_applied_hash(m), "spec": {"replicas": 0}})
    (True, False)
    >>> unchanged({**m, "spec": {"replicas": 3}}, with_applied_hash(m))
    False
    """
    notes = (observed.get("metadata") or {}).get("annotations") or {}
    if notes.get(APPLIED_HASH) != applied_hash(manifest):
        return False
    want = (manifest.get("spec") or {}).get("replicas")
    return want is None or (observed.get("spec") or {}).get("replicas") == want


def load_credentials() -> None:
    """In-cluster service account when inside a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """Thin wrapper over the generated clients, speaking plain dicts."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)

    # -- generic children ---------------------------------------------------------------------
    def create(self, manifest: dict[str, Any]) -> bool:
        """Create `manifest`; False when it already existed (409)."""
        ns, kind = manifest["metadata"]["namespace"], manifest["kind"]
        try:
            if kind == "Job":
                self.batch.create_namespaced_job(ns, manifest, field_manager=FIELD_MANAGER)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(ns, manifest, field_manager=FIELD_MANAGER)
            elif kind == "Service":
                self.core.create_namespaced_service(ns, manifest, field_manager=FIELD_MANAGER)
            elif kind in ENGINE_PLURALS:
                group, version = manifest["apiVersion"].split("/")
                plural = ENGINE_PLURALS[kind]
                self.custom.create_namespaced_custom_object(
                    group, version, ns, plural, manifest, field_manager=FIELD_MANAGER
                )
            else:
                raise ValueError(f"Kube.create does not handle kind {kind}")
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def apply(self, manifest: dict[str, Any], observed: dict[str, Any] | None) -> dict[str, Any]:
        """Server-side apply `manifest` unless `observed` (the object as read) already came from it.

        Returns the object as it now is. One call creates or updates; the fields it sets are owned by
        FIELD_MANAGER, and `force` takes back the ones another writer changed (we are the controller).
        """
        if observed is not None and unchanged(manifest, observed):
            return observed
        body = with_applied_hash(manifest)
        ns, name, kind = body["metadata"]["namespace"], body["metadata"]["name"], body["kind"]
        ssa: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        if kind == "Deployment":
            return self._plain(self.apps.patch_namespaced_deployment(name, ns, body, **ssa))
        if kind == "Service":
            return self._plain(self.core.patch_namespaced_service(name, ns, body, **ssa))
        if kind == "HTTPRoute":
            route: dict[str, Any] = self.custom.patch_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", ns, "httproutes", name, body, **ssa
            )
            return route
        raise ValueError(f"Kube.apply does not handle kind {kind}")

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment(
                name, namespace, {"spec": {"replicas": replicas}}, field_manager=FIELD_MANAGER
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.apps.list_namespaced_deployment(namespace, label_selector=selector).items
        return [self._plain(d) for d in items]

    def list_services(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [self._plain(s) for s in self.core.list_namespaced_service(namespace, label_selector=selector).items]

    def get_httproute(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            route: dict[str, Any] = self.custom.get_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", namespace, "httproutes", name
            )
            return route
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.batch.read_namespaced_job(name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(namespace, label_selector=selector).items
        return [self._plain(j) for j in items]

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job(name, namespace, patch, field_manager=FIELD_MANAGER)

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            # Background propagation: the garbage collector removes the Job's pods.
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise

    # -- other projects' training engines (JobSet, Kubeflow TrainJob) ---------------------------------
    def crd_established(self, name: str) -> bool:
        """Whether CRD `name` (plural.group) is installed and served: an engine's objects can be created."""
        try:
            crd = client.ApiextensionsV1Api(self.api_client).read_custom_resource_definition(name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    def get_engine_object(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        group, version = api_version.split("/")
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                group, version, namespace, ENGINE_PLURALS[kind], name
            )
            return obj
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_engine_object(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> None:
        group, version = api_version.split("/")
        self.custom.patch_namespaced_custom_object(
            group, version, namespace, ENGINE_PLURALS[kind], name, patch, field_manager=FIELD_MANAGER
        )

    def delete_engine_object(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        group, version = api_version.split("/")
        try:
            self.custom.delete_namespaced_custom_object(
                group, version, namespace, ENGINE_PLURALS[kind], name, propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [self._plain(p) for p in self.core.list_namespaced_pod(namespace, label_selector=selector).items]

    # -- Kubetune resources --------------------------------------------------------------------
    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, name)
            found: dict[str, Any] = obj
            return found
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> str | None:
        """JSON merge patch of `.status` (None values delete fields); returns the new resourceVersion.

        With `resource_version` the patch applies only to that version of the object: a concurrent
        writer got there first when it raises ApiException 409.
        """
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        obj = self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, plural, name, body, field_manager=FIELD_MANAGER
        )
        return ((obj or {}).get("metadata") or {}).get("resourceVersion") if isinstance(obj, dict) else None

    def remove_annotation(self, plural: str, namespace: str, name: str, key: str, value: str) -> str | None:
        """Remove annotation `key` if it still holds `value` (JSON patch test + remove, one atomic call).

        Returns the object's new resourceVersion (the caller's next guarded status patch builds on
        this write of its own); None when someone changed or removed it first: only one caller can
        consume an annotation.
        """
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        ops = [{"op": "test", "path": path, "value": value}, {"op": "remove", "path": path}]
        try:
            patched = self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                plural,
                name,
                ops,
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
            )
        except ApiException as err:
            if err.status in (404, 409, 422):
                return None
            raise
        return str(patched["metadata"]["resourceVersion"])

    # -- events --------------------------------------------------------------------------------
    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on `obj` (best effort: an event is never worth failing a reconcile)."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "source": {"component": "kubetune-operator"},
            "reportingComponent": "kubetune.io/operator",
            "reportingInstance": "kubetune-operator",
        }
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(meta["namespace"], body, field_manager=FIELD_MANAGER)

    def _plain(self, obj: Any) -> dict[str, Any]:
        plain: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)
        return plain
