"""values.yaml is documented and values.schema.json is closed: no undocumented or unknown values."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.chart.helm import CHART

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Kubernetes objects passed to the manifests as they are: documented as a whole, not key by key.
PASSTHROUGH = {"resources", "podSecurityContext", "securityContext", "labels"}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


def key_lines() -> list[tuple[tuple[str, ...], int]]:
    """(path, line index) of every mapping key in values.yaml (block style, as the file is written)."""
    lines = VALUES_TEXT.splitlines()
    stack: list[tuple[int, str]] = []
    found = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        found.append((tuple(k for _, k in stack), i))
    return found


def comment_above(index: int) -> list[str]:
    lines = VALUES_TEXT.splitlines()
    block = []
    j = index - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        block.append(lines[j].strip())
        j -= 1
    return block


def value_at(path: tuple[str, ...]) -> Any:
    node = VALUES
    for key in path:
        node = node[key]
    return node


def test_every_value_has_a_doc_comment() -> None:
    """helm-docs style: each value (a leaf, or a Kubernetes object passed through) has a `# --` comment
    above it; groups of values (image:, metrics:) need none."""
    undocumented = [
        ".".join(path)
        for path, i in key_lines()
        if not set(path[:-1]) & PASSTHROUGH
        and (path[-1] in PASSTHROUGH or not (isinstance(value_at(path), dict) and value_at(path)))
        and not any(c.startswith("# --") for c in comment_above(i))
    ]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_key_lines_cover_every_value() -> None:
    """The line scan above sees every key yaml sees (so the doc check cannot miss one)."""

    def paths(node: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
        out = set()
        if isinstance(node, dict):
            for k, v in node.items():
                out |= {(*prefix, k)} | paths(v, (*prefix, k))
        return out

    assert paths(VALUES) == {p for p, _ in key_lines()}


def walk_schema(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += walk_schema(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += walk_schema(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk_schema(node["additionalProperties"], f"{path}.*")
    for alt in node.get("anyOf", []):
        out += walk_schema(alt, path)
    return out


def test_schema_objects_are_closed() -> None:
    """Objects with named fields allow no others; maps say what their values are. The only open objects are
    affinity terms and env valueFrom: deep Kubernetes structures the apiserver validates."""
    for path, node in walk_schema(SCHEMA):
        if node.get("type") != "object":
            continue
        assert "additionalProperties" in node, f"{path or '<root>'}: additionalProperties not set"
        if "properties" in node:
            assert node["additionalProperties"] is False, f"{path}: named fields but additionalProperties allowed"
        elif node["additionalProperties"] is True:
            assert path.startswith(".affinity.") or path.endswith(".valueFrom"), f"{path}: open object"


def test_every_schema_field_of_the_chart_is_in_values_yaml() -> None:
    """Schema and values.yaml describe the same values (Kubernetes passthrough objects list more fields)."""

    def check(schema: dict[str, Any], values: Any, path: str) -> None:
        if schema.get("type") != "object" or "properties" not in schema or path.split(".")[-1] in PASSTHROUGH:
            return
        assert isinstance(values, dict), path
        missing = set(schema["properties"]) - set(values)
        if path.lstrip(".") not in {"affinity"}:
            assert not missing, f"{path or '<root>'}: in the schema but not in values.yaml: {sorted(missing)}"
        for name, child in schema["properties"].items():
            if name in values:
                check(child, values[name], f"{path}.{name}")

    check(SCHEMA, VALUES, "")
