"""Standard app.kubernetes.io labels and owner references for children."""

from __future__ import annotations

from typing import Any

from kubetune_operator import api
from kubetune_operator.builders.names import DNS_LABEL_MAX, short_digest


def label_value(name: str) -> str:
    """A name as a valid label value (63 characters at most), unique per name.

    A name that fits is used as is; a longer one keeps its first characters and ends in a hash of the
    whole name, so two names that share their first 63 characters still get different values.

    >>> label_value("support")
    'support'
    >>> a, b = label_value("x" * 63 + "-a"), label_value("x" * 63 + "-b")
    >>> len(a), a == b, a[-9:] == "-" + short_digest("x" * 63 + "-a")
    (63, False, True)
    """
    if len(name) <= DNS_LABEL_MAX:
        return name
    digest = short_digest(name)
    return f"{name[: DNS_LABEL_MAX - len(digest) - 1].rstrip('-_.')}-{digest}"


def child_labels(parent_name: str, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    labels = {
        api.LABEL_NAME: "kubetune",
        api.LABEL_INSTANCE: label_value(parent_name),
        api.LABEL_COMPONENT: component,
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_PART_OF: "kubetune",
    }
    labels.update(extra or {})
    return labels


def owner_reference(parent: dict[str, Any]) -> dict[str, Any]:
    """Controller owner reference: deleting the parent garbage-collects the child."""
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
