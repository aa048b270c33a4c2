# Kubetune developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
VENV = $(shell bash hack/setup.sh | tail -1)

.PHONY: test lint demo setup control-plane chart-crds

setup:
	@bash hack/setup.sh

control-plane:
	@bash hack/build-control-plane.sh --with-helm

# crds/ is the single source of truth; the chart carries a copy (a test fails when they differ).
chart-crds:
	@bash hack/sync-chart-crds.sh

lint:
	@venv="$(VENV)"; set -e; \
	"$$venv/bin/ruff" check . ; \
	"$$venv/bin/ruff" format --check . ; \
	"$$venv/bin/mypy" operator trainer dev

# Every tier this machine can run: unit, k8s (real apiserver), slow (real training); gpu skips without CUDA.
test:
	@venv="$(VENV)"; set -e; \
	"$$venv/bin/ruff" check . ; \
	"$$venv/bin/ruff" format --check . ; \
	"$$venv/bin/mypy" operator trainer dev ; \
	"$$venv/bin/python" -m pytest --doctest-modules operator/kubetune_operator dev/kubetune_dev tests

demo:
	@venv="$(VENV)"; "$$venv/bin/python" hack/demo.py
