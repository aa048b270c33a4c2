"""A ModelDeployment's children, observed once per reconcile, and the writes that converge them.

Reads, on first use: one list of its Deployments, one of its Services, and its HTTPRoute with
`traffic: gatewayAPI`. Writes: server-side apply where the manifest differs from what was applied
last, and a replica patch where the size differs. A ModelDeployment at rest writes nothing.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator import api
from kubetune_operator.builders import serving
from kubetune_operator.builders.labels import label_value
from kubetune_operator.kube import Kube
from kubetune_operator.serving_spec import ModelDeploymentSpec
from kubetune_operator.settings import Settings


class Children:
    def __init__(self, kube: Kube, md: dict[str, Any], spec: ModelDeploymentSpec, settings: Settings) -> None:
        self.kube, self.md, self.spec, self.settings = kube, md, spec, settings
        self.ns, self.name = md["metadata"]["namespace"], md["metadata"]["name"]
        self.selector = f"{api.LABEL_INSTANCE}={label_value(self.name)},{api.LABEL_COMPONENT}={serving.COMPONENT}"
        self._deployments: dict[str, dict[str, Any]] | None = None
        self._services: dict[str, dict[str, Any]] | None = None
        self._route: tuple[dict[str, Any] | None] | None = None  # (route or None) once read

    def deployment(self, track: str) -> dict[str, Any] | None:
        return self._observed_deployments().get(serving.deployment_name(self.name, track))

    def ensure_services(self) -> None:
        if self._services is None:
            self._services = {_name(s): s for s in self.kube.list_services(self.ns, self.selector)}
        for svc in serving.build_services(self.spec, self.md):
            self._services[_name(svc)] = self.kube.apply(svc, self._services.get(_name(svc)))

    def apply_track(self, track: str, version: str, adapter: str | None, replicas: int) -> None:
        manifest = serving.build_deployment(self.spec, self.md, track, version, adapter, replicas, self.settings)
        self._observed_deployments()[_name(manifest)] = self.kube.apply(manifest, self.deployment(track))

    def scale(self, track: str, replicas: int) -> None:
        """Resize a track that exists, writing only when its size differs (a missing one stays missing)."""
        dep = self.deployment(track)
        if dep is not None and (dep.get("spec") or {}).get("replicas") != replicas:
            self.kube.scale_deployment(self.ns, _name(dep), replicas)
            dep.setdefault("spec", {})["replicas"] = replicas

    def delete(self, track: str) -> None:
        if self.deployment(track) is not None:
            self.kube.delete_deployment(self.ns, serving.deployment_name(self.name, track))
            self._observed_deployments().pop(serving.deployment_name(self.name, track), None)

    def route(self, canary_weight: int) -> None:
        """The HTTPRoute's weights, with `traffic: gatewayAPI` (with `replicas` the pod ratio is the split)."""
        if self.spec.traffic != "gatewayAPI":
            return
        if self._route is None:
            self._route = (self.kube.get_httproute(self.ns, self.name),)
        self._route = (self.kube.apply(serving.build_httproute(self.spec, self.md, canary_weight), self._route[0]),)

    def _observed_deployments(self) -> dict[str, dict[str, Any]]:
        if self._deployments is None:
            self._deployments = {_name(d): d for d in self.kube.list_deployments(self.ns, self.selector)}
        return self._deployments


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])
