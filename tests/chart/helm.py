"""Rendering the chart with the helm binary that hack/build-control-plane.sh --with-helm builds."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from kubetune_dev.controlplane import REPO, ControlPlaneError, asset_dir

CHART = REPO / "charts" / "kubetune"
RELEASE, NAMESPACE = "kubetune", "kubetune-system"
# Every scenario the chart is linted, rendered and dry-run applied with: the defaults, then ci/*.
SCENARIOS = ["defaults", *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))]


class HelmError(RuntimeError):
    pass


@cache
def helm_binary() -> Path | None:
    """helm next to the control-plane binaries (or on PATH); None when neither has it."""
    try:
        candidate = asset_dir() / "helm"
    except ControlPlaneError:
        candidate = None
    if candidate is not None and candidate.exists():
        return candidate
    found = shutil.which("helm")
    return Path(found) if found else None


def values_args(scenario: str) -> list[str]:
    return [] if scenario == "defaults" else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    if binary is None:
        raise HelmError("helm not found: run `bash hack/build-control-plane.sh --with-helm`")
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


@cache
def _template_text(scenario: str, extra: tuple[str, ...] = ()) -> str:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(scenario), *extra).stdout


def render_text(scenario: str = "defaults", *extra: str) -> str:
    """`helm template` output (cached: the objects are parsed afresh by `render`)."""
    return _template_text(scenario, tuple(extra))


def render(scenario: str = "defaults", *extra: str) -> list[dict[str, Any]]:
    """The rendered objects of a scenario; `extra` are more helm arguments (e.g. --set a=b)."""
    return [doc for doc in yaml.safe_load_all(render_text(scenario, *extra)) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules as (apiGroup, resource, verb) triples, so comparisons ignore how rules are grouped."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def triples(spec: dict[tuple[str, str], str]) -> set[tuple[str, str, str]]:
    """{(group, resource): "verb verb"} -> triples."""
    return {(g, r, v) for (g, r), verbs in spec.items() for v in verbs.split()}
