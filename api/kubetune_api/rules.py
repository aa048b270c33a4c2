"""The base of every API model: camelCase names, no unknown fields, and CEL rules next to their objects.

Room: the API package (no torch, no kubernetes). A `Rule` is one cross-field constraint written
twice, side by side: as CEL for the apiserver (it lands in the CRD's `x-kubernetes-validations`) and
as a Python predicate for the shared parser. The bad-spec table (tests/support/bad_specs.py) runs
every row through both, which is what keeps the two spellings saying the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    cel: str  # evaluated by the apiserver with `self` bound to the object
    message: str  # what both the apiserver and the parser say when the rule fails
    holds: Callable[[Any], bool]  # the same rule on the parsed object


def has(obj: BaseModel, name: str) -> bool:
    """CEL's `has(self.x)` for a field without a schema default: whether the spec wrote it."""
    return name in obj.model_fields_set


def _schema_extra(schema: dict[str, Any], cls: type[ApiModel]) -> None:
    schema.pop("title", None)
    if cls.rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in cls.rules]


def no_schema_default(schema: dict[str, Any]) -> None:
    """For a default the parser applies but the CRD must not store: a schema default added after v0.1
    would change every stored spec (and so its run hash) on upgrade."""
    schema.pop("default", None)


class ApiModel(BaseModel):
    """Strict like the apiserver with `fieldValidation: Strict`: unknown keys and wrong types are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        strict=True,
        json_schema_extra=_schema_extra,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        broken = [r.message for r in type(self).rules if not r.holds(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self
