"""Standard app.kubernetes.io labels and owner references for children."""

from __future__ import annotations

from typing import Any

from kubetune_operator import api


def label_value(name: str) -> str:
    """A name shortened to a valid label value (63 characters, alphanumeric at both ends).

    >>> label_value("a" * 62 + "-b")
    'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """
    return name[:63].rstrip("-_.")


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
