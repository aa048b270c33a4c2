"""The two CustomResourceDefinitions, generated from the models (hack/gen_crds.py writes them).

Room: the API package. Pydantic writes JSON Schema (2020-12); a CRD wants a structural OpenAPI v3.0
schema: no $ref, no anyOf for optional fields, boolean exclusive bounds, `nullable` only where asked.
`structural` translates one into the other, with a fixed key order so the output is byte-stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kubetune_api.finetunejob import FineTuneJobSpec
from kubetune_api.modeldeployment import ModelDeploymentSpec
from kubetune_api.status import FineTuneJobStatus, ModelDeploymentStatus

GROUP, VERSION = "kubetune.io", "v1alpha1"
# The order keys are written in: what a field is, then its bounds, then its children.
KEY_ORDER = (
    *("type", "format", "description", "enum", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"),
    *("minLength", "maxLength", "pattern", "minItems", "maxItems", "nullable", "default", "required"),
    *("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type"),
    *("x-kubernetes-list-map-keys", "x-kubernetes-validations", "items", "additionalProperties", "properties"),
)


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    short_name: str
    comment: str  # the generated file's first line
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: tuple[dict[str, str], ...]

    @property
    def file_name(self) -> str:
        return f"{self.kind.lower()}.yaml"


FINETUNEJOB = Resource(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_name="ftj",
    comment="FineTuneJob: fine-tune a base model on a domain dataset; the operator runs it as a batch/v1 Job.",
    description="FineTuneJob fine-tunes a base LLM on a domain dataset and stores the resulting adapter.",
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    printer_columns=(
        {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Run", "type": "integer", "jsonPath": ".status.run"},
        {"name": "Step", "type": "string", "jsonPath": ".status.progress.stepText"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "Eval", "type": "string", "jsonPath": '.status.conditions[?(@.type=="EvalPassed")].status'},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)
MODELDEPLOYMENT = Resource(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_name="mdep",
    comment="ModelDeployment: serve a base model with an adapter; roll new versions out as Prometheus-gated canaries.",
    description="ModelDeployment serves a base model plus adapter and rolls changes out as a canary.",
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    printer_columns=(
        {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Canary",
            "type": "integer",
            "description": "The canary step's nominal percent of traffic",
            "jsonPath": ".status.canaryWeight",
        },
        {
            "name": "Achieved",
            "type": "number",
            "description": "Percent of requests the canary pods really get",
            "jsonPath": ".status.achievedCanaryWeight",
        },
        {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)
RESOURCES = (FINETUNEJOB, MODELDEPLOYMENT)


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON Schema node as a structural OpenAPI v3.0 node."""
    node = dict(schema)
    if "$ref" in node:  # a nested model: its definition, with the field's own keys on top
        node = {**defs[node.pop("$ref").rsplit("/", 1)[1]], **node}
    if "anyOf" in node:  # `X | None`: the field is optional, which absence already says
        members = [m for m in node.pop("anyOf") if m.get("type") != "null"]
        assert len(members) == 1, f"unions other than X | None have no structural schema: {members}"
        node = {**structural(members[0], defs), **node}
    if node.get("default", 0) is None:
        del node["default"]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[inclusive], node[bound] = node[bound], True
    node.pop("title", None)
    if "const" in node:  # a one-value Literal: pydantic writes const, which a structural schema lacks
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("additionalProperties"), dict):  # a map: the schema of its values
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    else:  # `extra="forbid"` says false; a structural schema prunes unknown fields (or strict rejects them)
        node.pop("additionalProperties", None)
    if "x-kubernetes-validations" in node:  # pydantic sorts keys; a rule reads better before its message
        node["x-kubernetes-validations"] = [
            {"rule": v["rule"], "message": v["message"]} for v in node["x-kubernetes-validations"]
        ]
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if node.get("enum") and "type" not in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    return {k: node[k] for k in KEY_ORDER if k in node} | {k: v for k, v in node.items() if k not in KEY_ORDER}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.pop("$defs", {}))


def crd(resource: Resource) -> dict[str, Any]:
    """The whole CustomResourceDefinition of one kind."""
    spec_schema = openapi_schema(resource.spec)
    spec_schema.pop("description", None)  # the kind's description says it, at the top
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.kind.lower(),
                "shortNames": [resource.short_name],
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in resource.printer_columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": resource.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": openapi_schema(resource.status),
                            },
                        }
                    },
                }
            ],
        },
    }
