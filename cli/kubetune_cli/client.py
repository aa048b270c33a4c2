"""The plugin's one I/O module: the user's kubeconfig, and get/patch/list/watch of our kinds.

Room: the kubectl plugin. Everything that talks to the apiserver is here; every apiserver error
leaves as a `CliError` with the one line a user acts on (not found, forbidden, no kubeconfig).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

GROUP, VERSION = "kubetune.io", "v1alpha1"
KINDS = {"ftj": ("finetunejobs", "finetunejob"), "mdep": ("modeldeployments", "modeldeployment")}
LABEL_FINETUNEJOB, LABEL_RUN = f"{GROUP}/finetunejob", f"{GROUP}/run"


class CliError(Exception):
    """One line for the user; the plugin exits 1 with it."""


@dataclass(frozen=True)
class Target:
    kubeconfig: str | None
    context: str | None
    namespace: str | None


def _explain(err: ApiException, verb: str, what: str, name: str | None, ns: str) -> CliError:
    """The apiserver's refusal as one line: "finetunejob foo not found in namespace bar", or who may not."""
    if err.status == 404:
        return CliError(f"{what} {name} not found in namespace {ns}" if name else f"{what} not found in {ns}")
    try:
        message = str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        message = str(err.body or err.reason)
    if err.status == 403:
        user = re.search(r'User "([^"]+)"', message)
        who = f"user {user.group(1)}" if user else "user"
        plural = KINDS.get(what, (what + "s",))[0] if what in KINDS else f"{what}s"
        return CliError(f"forbidden: {who} cannot {verb} {plural} in namespace {ns}")
    if err.status == 422 and "test" in message.lower():
        return CliError(f"{what} {name} changed since it was read (another version is in flight now): run it again")
    if err.status == 401:
        return CliError(f"unauthorized: the apiserver rejected the kubeconfig's credentials ({message})")
    return CliError(f"{verb} {what} {name or ''} in namespace {ns}: {err.status} {message}".replace("  ", " "))


class Kube:
    def __init__(self, target: Target) -> None:
        try:
            contexts, active = config.list_kube_config_contexts(config_file=target.kubeconfig)
            self.api = config.new_client_from_config(config_file=target.kubeconfig, context=target.context)
        except (config.ConfigException, OSError) as err:
            where = target.kubeconfig or "KUBECONFIG / ~/.kube/config"
            raise CliError(f"no usable kubeconfig ({where}): {err}") from err
        chosen = next((c for c in contexts if c["name"] == target.context), active) if target.context else active
        self.ns: str = target.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)

    def _call(self, verb: str, what: str, name: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise _explain(err, verb, what, name, self.ns) from err
        except HTTPError as err:
            host = self.api.configuration.host
            raise CliError(f"cannot reach the apiserver at {host}: {err}") from err

    def get(self, kind: str, name: str) -> dict[str, Any]:
        plural, what = KINDS[kind]
        fn = self.custom.get_namespaced_custom_object
        return dict(self._call("get", what, name, fn, GROUP, VERSION, self.ns, plural, name))

    def patch(self, kind: str, name: str, body: Any, json_patch: bool = False) -> dict[str, Any]:
        """A merge patch (or, with `json_patch`, a JSON patch: a list of operations that can test values)."""
        plural, what = KINDS[kind]
        fn = self.custom.patch_namespaced_custom_object
        kwargs = {"_content_type": "application/json-patch+json"} if json_patch else {}
        return dict(self._call("patch", what, name, fn, GROUP, VERSION, self.ns, plural, name, body, **kwargs))

    def watch(self, kind: str, name: str, timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """The object now, then each version of it the apiserver sends, until `timeout_seconds` of watch."""
        obj = self.get(kind, name)
        yield obj
        plural, what = KINDS[kind]
        w = watch.Watch()
        while True:
            rv = obj["metadata"]["resourceVersion"]
            stream = w.stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.ns,
                plural,
                field_selector=f"metadata.name={name}",
                resource_version=rv,
                timeout_seconds=timeout_seconds,
            )
            try:
                for event in stream:
                    if event["type"] == "DELETED":
                        raise CliError(f"{what} {name} was deleted from namespace {self.ns}")
                    if event["type"] in ("ADDED", "MODIFIED"):
                        obj = event["object"]
                        yield obj
            except ApiException as err:
                if err.status == 410:  # the resourceVersion is too old: start from the object as it is now
                    obj = self.get(kind, name)
                    yield obj
                    continue
                raise _explain(err, "watch", what, name, self.ns) from err
            except HTTPError as err:
                raise CliError(f"watch of {what} {name} broke: {err}") from err

    def run_jobs(self, name: str) -> list[dict[str, Any]]:
        """The trainer Jobs of a FineTuneJob still in the cluster (the operator keeps finished runs)."""
        fn = self.batch.list_namespaced_job
        jobs = self._call("list", "job", None, fn, self.ns, label_selector=f"{LABEL_FINETUNEJOB}={name}")
        return [self.api.sanitize_for_serialization(j) for j in jobs.items]

    def run_pods(self, name: str, run: int | None = None) -> list[dict[str, Any]]:
        selector = f"{LABEL_FINETUNEJOB}={name}" + (f",{LABEL_RUN}={run}" if run is not None else "")
        fn = self.core.list_namespaced_pod
        pods = self._call("list", "pod", None, fn, self.ns, label_selector=selector)
        return [self.api.sanitize_for_serialization(p) for p in pods.items]

    def pod_log(self, pod: str, follow: bool, tail: int | None) -> Iterator[str]:
        fn = self.core.read_namespaced_pod_log
        kwargs: dict[str, Any] = {"follow": follow, "_preload_content": False}
        if tail is not None:
            kwargs["tail_lines"] = tail
        resp = self._call("get", "pod log of", pod, fn, pod, self.ns, **kwargs)
        try:
            for chunk in resp.stream(1024):
                yield chunk.decode(errors="replace")
        finally:
            resp.release_conn()
