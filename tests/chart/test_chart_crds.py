"""crds/ and the chart's CRDs are generated from the API models (hack/gen_crds.py) and never stale."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from kubetune_dev.controlplane import REPO
from tests.chart.helm import CHART, find, helm_binary, render

NEEDS_HELM = False  # only the rendering test does (it skips itself without helm)
SOURCE, COPY = REPO / "crds", CHART / "files" / "crds"
GENERATOR = REPO / "hack" / "gen_crds.py"


def test_chart_crd_copies_equal_crds_dir_byte_for_byte() -> None:
    names = sorted(p.name for p in SOURCE.glob("*.yaml"))
    assert names == ["finetunejob.yaml", "modeldeployment.yaml"]
    assert sorted(p.name for p in COPY.glob("*.yaml")) == names, "run make crds"
    for name in names:
        assert (COPY / name).read_bytes() == (SOURCE / name).read_bytes(), f"{name} differs: run make crds"


def test_generated_crds_are_not_stale() -> None:
    """A change to the models without `make crds` (or a hand edit of a generated file) fails here."""
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_generator_output_is_byte_stable() -> None:
    """Two processes with different hash seeds (set and dict orders) write the same bytes."""
    code = (
        f"import hashlib, runpy; texts = runpy.run_path({str(GENERATOR)!r})['expected']().values(); "
        "print(hashlib.sha256(''.join(texts).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1 and len(next(iter(digests))) == 65, digests


def test_rendered_crds_are_the_source_plus_labels_and_keep() -> None:
    """The template adds metadata only; the API (spec) is exactly crds/."""
    if helm_binary() is None:
        pytest.skip("helm not built: run `bash hack/build-control-plane.sh --with-helm` (hack/setup.sh does)")
    rendered = {c["metadata"]["name"]: c for c in find(render(), "CustomResourceDefinition")}
    for path in SOURCE.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["spec"] == source["spec"]
        assert {k: v for k, v in crd.items() if k != "metadata"} == {k: v for k, v in source.items() if k != "metadata"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crd"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
