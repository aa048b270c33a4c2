"""A FineTuneJob's spec.dataset: where the rows come from, their format and columns, splitting and cleaning.

Room: the API package (see finetunejob.py, which composes the spec from this and its siblings).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune_api.common import DURATION, INPUT_LOCATION, LOCATION, InClaim, MaybeInClaim
from kubetune_api.rules import ApiModel, Rule, has, no_schema_default

# A server's --version, as response ids carry it (kt-<version>-<32 hex>).
VERSION = "^[A-Za-z0-9._-]+$"


class DatasetFields(ApiModel):
    prompt: str = Field("prompt", max_length=128)
    response: str = Field("response", max_length=128)
    messages: str = Field("messages", max_length=128)
    text: str = Field("text", max_length=128)
    system: str | None = Field(None, max_length=128)
    chosen: str = Field("chosen", max_length=128, description="format preference: the preferred response.")
    rejected: str = Field("rejected", max_length=128, description="format preference: the dispreferred response.")


class Split(ApiModel):
    rules = (
        Rule(
            "(has(self.validation) ? self.validation : 0.1) + (has(self.test) ? self.test : 0.1) < 1.0",
            "split.validation + split.test must leave data to train on (sum < 1)",
            lambda s: s.validation + s.test < 1.0,
        ),
    )
    validation: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(42, ge=0)


class Cleaning(ApiModel):
    rules = (
        Rule(
            "!has(self.maxChars) || self.maxChars >= (has(self.minChars) ? self.minChars : 1)",
            "cleaning.maxChars must be >= cleaning.minChars",
            lambda s: s.max_chars is None or s.max_chars >= s.min_chars,
        ),
    )
    dedup: bool = Field(True, description="Drop exact and whitespace/case-normalised duplicates.")
    normalize_whitespace: bool = True
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    drop_outliers: bool = Field(False, description="Drop examples longer than Q3 + 3 IQR of the lengths.")
    max_row_bytes: int = Field(
        8 << 20,
        ge=1,
        le=1 << 30,
        description=(
            "Rows longer than this many bytes (8388608, 8 MiB, when unset) are dropped unread and counted in "
            "status.data.oversizedDropped: a bound on the memory one row can take."
        ),
        json_schema_extra=no_schema_default,
    )


class Mix(ApiModel):
    uri: InClaim = Field(max_length=1024)
    # 0 would mix nothing in: leave the section out instead.
    fraction: float = Field(gt=0, lt=1, description="Share of the training split that comes from the mix.")


class ModelDeploymentRef(ApiModel):
    name: str = Field(max_length=253, description="A ModelDeployment in the same namespace.")


class Captures(ApiModel):
    """Rows from the requests and feedback a ModelDeployment's servers captured (its spec.capture)."""

    rules = (
        Rule(
            "has(self.modelDeploymentRef) != has(self.uri)",
            "spec.dataset.captures needs exactly one of modelDeploymentRef or uri",
            lambda s: has(s, "model_deployment_ref") != has(s, "uri"),
        ),
    )
    model_deployment_ref: ModelDeploymentRef | None = Field(
        None,
        description=(
            "Read the captures of this ModelDeployment: the operator resolves it to its spec.capture.uri before "
            "any pod starts."
        ),
    )
    uri: MaybeInClaim = Field(
        None,
        max_length=1024,
        pattern=LOCATION,
        description="The capture location itself (pvc://claim/path, s3://bucket/prefix or an absolute path).",
    )
    since: str | None = Field(
        None,
        max_length=64,
        pattern=DURATION,
        description=(
            "Only requests captured this long before the run started (Go duration, e.g. 168h); unset: all of them."
        ),
    )
    min_rating: int = Field(
        4,
        ge=1,
        le=5,
        description=(
            "Responses rated at least this (1..5) become instruction and chat rows, and the chosen side of "
            "up-vs-down pairs (a down rating is <= 2); corrected answers are used whatever the rating."
        ),
    )
    versions: list[Annotated[str, Field(max_length=128, pattern=VERSION)]] | None = Field(
        None, max_length=64, description="Only responses of these serving versions; unset: every version."
    )


class Dataset(ApiModel):
    rules = (
        Rule(
            "has(self.uri) != has(self.captures)",
            "exactly one of spec.dataset.uri or spec.dataset.captures must be set",
            lambda s: has(s, "uri") != has(s, "captures"),
        ),
        Rule(
            "!has(self.captures) || self.format != 'text'",
            "spec.dataset.captures gives instruction, chat or preference rows, not format text",
            lambda s: s.captures is None or s.format != "text",
        ),
    )
    uri: MaybeInClaim = Field(
        None,
        max_length=1024,
        pattern=INPUT_LOCATION,
        description="pvc://claim/path, s3://bucket/key, hf://org/name or an absolute path.",
    )
    captures: Captures | None = Field(
        None,
        description=(
            "Instead of uri: build the rows from captured traffic and feedback (corrections and well-rated "
            "responses; with format preference, corrected-vs-original and up-vs-down pairs). Train/validation/test "
            "by a stable hash of the prompt; rows earlier runs trained on are dropped; no new rows: run Skipped."
        ),
    )
    format: Literal["instruction", "chat", "text", "preference"] = Field(
        "instruction",
        description=(
            "instruction (prompt/response), chat (messages), text (continued pre-training) or preference "
            "(prompt/chosen/rejected, for method dpo or orpo)."
        ),
    )
    fields: DatasetFields = Field(
        default_factory=DatasetFields, description="Column names in the dataset for each role."
    )
    split: Split = Field(
        default_factory=Split,
        description="Held-out fractions, split once with a seed before training.",
        json_schema_extra={"default": {}},
    )
    cleaning: Cleaning = Field(default_factory=Cleaning, json_schema_extra={"default": {}})
    mix: Mix | None = Field(None, description="General-domain text mixed in against forgetting (format text only).")
