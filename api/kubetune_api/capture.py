"""A ModelDeployment's spec.capture: which requests its servers record, where, in what files, and what is masked.

Room: the API package (see modeldeployment.py, which composes the spec from this and its siblings). The
file layout and record shapes the servers write are the issue-13 contract that
kubetune_trainer.captured reads; these are only the knobs.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from kubetune_api.common import CLAIM, InClaim
from kubetune_api.rules import ApiModel

# Servers write here; a path inside the image is read-only in a pod, so only a claim or a bucket.
CAPTURE_LOCATION = f"^({CLAIM}|s3://[^/]+/.*)$"


def _compiles(pattern: str) -> str:
    """A regex CEL cannot check is checked here, before any pod starts (the servers compile it too)."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"not a regular expression ({e})") from e
    return pattern


JsonKey = Annotated[str, Field(min_length=1, max_length=128)]
Pattern = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_compiles)]


class Redact(ApiModel):
    fields: list[JsonKey] | None = Field(
        None,
        max_length=32,
        description=(
            'JSON keys whose values become "[REDACTED]" wherever they appear in a record (e.g. user, email), '
            "before it is written."
        ),
    )
    patterns: list[Pattern] | None = Field(
        None,
        max_length=32,
        description=(
            "Regular expressions (Python syntax) whose matches in prompts, messages, responses and corrections "
            'become "[REDACTED]" before they are written; bearer tokens, sk-... API keys and AWS access keys '
            "are always redacted."
        ),
    )


class Capture(ApiModel):
    uri: InClaim = Field(
        max_length=1024,
        pattern=CAPTURE_LOCATION,
        description=(
            "Where the servers write <uri>/<version>/requests-*.jsonl and feedback-*.jsonl: pvc://claim/path "
            "(mounted read-write) or s3://bucket/prefix (a file is uploaded when it rotates; keys from envFrom)."
        ),
    )
    sample_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "Share of responses recorded, chosen by a hash of the response id; feedback is recorded for every "
            "response, sampled or not."
        ),
    )
    max_file_bytes: int = Field(
        8 << 20, ge=1024, le=1 << 30, description="A capture file is closed and a new one begun past this size."
    )
    max_file_seconds: int = Field(
        300,
        ge=1,
        le=86400,
        description="A capture file is closed (published) at most this long after its first record.",
    )
    redact: Redact | None = Field(None, description="What is masked before a record is written.")
