"""The shared parser: a spec dict in, the typed spec out, or one error that names every bad field.

Room: the API package. The operator and the trainer both parse through here, once per reconcile or
run; the messages use the API's own paths (``spec.training.batchSize``), as the apiserver's do.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kubetune_api.finetunejob import FineTuneJobSpec
from kubetune_api.modeldeployment import ModelDeploymentSpec

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """The spec breaks the API; the message names each offending field (``spec.lora.alpha: ...``)."""


def field_path(loc: tuple[int | str, ...], root: str = "spec") -> str:
    """``("canary", "steps", 1)`` -> ``spec.canary.steps[1]``, the apiserver's spelling.

    >>> field_path(("canary", "steps", 1)), field_path(())
    ('spec.canary.steps[1]', 'spec')
    """
    return root + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _message(err: ValidationError) -> str:
    problems = []
    for e in err.errors(include_url=False):
        text = e["msg"].removeprefix("Value error, ")
        problems.append(f"{field_path(e['loc'])}: {text}")
    return "; ".join(problems)


def parse(model: type[M], spec: Any) -> M:
    if not isinstance(spec, dict):
        raise SpecError(f"spec: expected a mapping, got {type(spec).__name__}")
    try:
        return model.model_validate(spec)
    except ValidationError as err:
        raise SpecError(_message(err)) from None


def parse_finetunejob(spec: Any) -> FineTuneJobSpec:
    return parse(FineTuneJobSpec, spec)


def parse_modeldeployment(spec: Any) -> ModelDeploymentSpec:
    return parse(ModelDeploymentSpec, spec)
