"""Kubetune's API: one typed model per resource, the source of the CRDs, the API reference and every parser.

Room: imported by the operator and the trainer alike, so it imports neither torch nor kubernetes
(a test enforces it); pydantic does the modelling and the JSON-schema generation.
"""

from kubetune_api.finetunejob import FineTuneJobSpec
from kubetune_api.modeldeployment import ModelDeploymentSpec
from kubetune_api.parse import SpecError, field_path, parse_finetunejob, parse_modeldeployment

__all__ = [
    "FineTuneJobSpec",
    "ModelDeploymentSpec",
    "SpecError",
    "field_path",
    "parse_finetunejob",
    "parse_modeldeployment",
]
