"""The operator's only door to the Kubernetes API: create, get, patch, delete, list, events.

Create treats 409 (already there) as success and delete treats 404 (already gone) as success, so
every caller is idempotent and safe to re-run after a crash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune_operator import api


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
                self.batch.create_namespaced_job(ns, manifest)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(ns, manifest)
            else:
                raise ValueError(f"Kube.create does not handle kind {kind}")
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def apply(self, manifest: dict[str, Any]) -> None:
        """Create, or patch to match: for the serving children whose spec follows the rollout."""
        ns, name, kind = manifest["metadata"]["namespace"], manifest["metadata"]["name"], manifest["kind"]
        try:
            if kind == "Deployment":
                self.apps.create_namespaced_deployment(ns, manifest)
            elif kind == "Service":
                self.core.create_namespaced_service(ns, manifest)
            elif kind == "HTTPRoute":
                self.custom.create_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", ns, "httproutes", manifest
                )
            else:
                raise ValueError(f"Kube.apply does not handle kind {kind}")
            return
        except ApiException as err:
            if err.status != 409:
                raise
        if kind == "Deployment":
            self.apps.patch_namespaced_deployment(name, ns, manifest)
        elif kind == "HTTPRoute":
            self.custom.patch_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", ns, "httproutes", name, manifest
            )
        # A Service's selector and ports never change for a ModelDeployment: leave it as created.

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}})
        except ApiException as err:
            if err.status != 404:
                raise

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.apps.read_namespaced_deployment(name, namespace))
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
        self.batch.patch_namespaced_job(name, namespace, patch)

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            # Background propagation: the garbage collector removes the Job's pods.
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
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
        obj = self.custom.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, plural, name, body)
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
                api.GROUP, api.VERSION, namespace, plural, name, ops, _content_type="application/json-patch+json"
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
            self.core.create_namespaced_event(meta["namespace"], body)

    def _plain(self, obj: Any) -> dict[str, Any]:
        plain: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)
        return plain
