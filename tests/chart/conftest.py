"""Chart and image tests. Fast ones render with helm; those marked k8s reuse the suite's control plane."""

from __future__ import annotations

import pytest

from tests.chart.helm import helm_binary


@pytest.fixture(autouse=True)
def _needs_helm(request: pytest.FixtureRequest) -> None:
    # Modules that need no helm (the image tests) set NEEDS_HELM = False.
    if getattr(request.module, "NEEDS_HELM", True) and helm_binary() is None:
        pytest.skip("helm not built: run `bash hack/build-control-plane.sh --with-helm` (hack/setup.sh does)")
