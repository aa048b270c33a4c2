"""The chart's CRDs are crds/ (the API's single source of truth), copied by hack/sync-chart-crds.sh."""

from __future__ import annotations

import subprocess

import yaml

from kubetune_dev.controlplane import REPO
from tests.chart.helm import CHART, find, render

SOURCE, COPY = REPO / "crds", CHART / "files" / "crds"


def test_chart_crd_copies_equal_crds_dir_byte_for_byte() -> None:
    names = sorted(p.name for p in SOURCE.glob("*.yaml"))
    assert names, "no CRDs in crds/"
    assert sorted(p.name for p in COPY.glob("*.yaml")) == names, "run hack/sync-chart-crds.sh"
    for name in names:
        assert (COPY / name).read_bytes() == (SOURCE / name).read_bytes(), (
            f"{name} differs: run hack/sync-chart-crds.sh"
        )


def test_sync_script_check_mode_agrees() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_rendered_crds_are_the_source_plus_labels_and_keep() -> None:
    """The template adds metadata only; the API (spec) is exactly crds/."""
    rendered = {c["metadata"]["name"]: c for c in find(render(), "CustomResourceDefinition")}
    for path in SOURCE.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["spec"] == source["spec"]
        assert {k: v for k, v in crd.items() if k != "metadata"} == {k: v for k, v in source.items() if k != "metadata"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crd"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
