"""A FineTuneJob's spec.dataset: where the rows come from, their format and columns, splitting and cleaning.

Room: the API package (see finetunejob.py, which composes the spec from this and its siblings).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune_api.common import INPUT_LOCATION, InClaim
from kubetune_api.rules import ApiModel, Rule, no_schema_default


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


class Dataset(ApiModel):
    uri: InClaim = Field(
        max_length=1024,
        pattern=INPUT_LOCATION,
        description="pvc://claim/path, s3://bucket/key, hf://org/name or an absolute path.",
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
