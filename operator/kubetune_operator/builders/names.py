"""Deterministic names for what the operator creates, so a re-run finds instead of duplicating."""

from __future__ import annotations

import hashlib

DNS_LABEL_MAX = 63


def short_digest(name: str) -> str:
    """8 hex characters of sha256(name): what tells apart two long names cut to the same prefix."""
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def bounded(name: str, suffix: str, limit: int = DNS_LABEL_MAX) -> str:
    """`name-suffix`, shortened with a hash of the full name when it would exceed `limit`.

    >>> bounded("demo", "run-1")
    'demo-run-1'
    >>> len(bounded("x" * 80, "run-1"))
    63
    """
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = short_digest(name)
    keep = limit - len(suffix) - len(digest) - 2
    return f"{name[:keep].rstrip('-')}-{digest}-{suffix}"


def trainer_job_name(finetunejob: str, run: int) -> str:
    # Job names feed the `job-name` pod label, so they must fit a 63-character label value.
    return bounded(finetunejob, f"run-{run}")


def spec_configmap_name(finetunejob: str, run: int) -> str:
    return bounded(finetunejob, f"run-{run}-spec", limit=253)
