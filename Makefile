# Kubetune developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
VENV = $(shell bash hack/setup.sh | tail -1)

.PHONY: test lint demo setup control-plane crds chart-crds

setup:
	@bash hack/setup.sh

control-plane:
	@bash hack/build-control-plane.sh --with-helm

# The API models (api/kubetune_api) are the single source of truth: they give crds/, the chart's copy
# and the README's API reference (a test fails when any of them is stale).
crds:
	@venv="$(VENV)"; set -e; \
	"$$venv/bin/python" hack/gen_crds.py ; \
	"$$venv/bin/python" hack/gen_api_reference.py

chart-crds: crds

lint:
	@venv="$(VENV)"; set -e; \
	"$$venv/bin/ruff" check . ; \
	"$$venv/bin/ruff" format --check . ; \
	"$$venv/bin/mypy" api operator trainer dev cli

# Every tier this machine can run: unit, k8s (real apiserver), slow (real training); gpu skips without CUDA.
test:
	@venv="$(VENV)"; set -e; \
	"$$venv/bin/ruff" check . ; \
	"$$venv/bin/ruff" format --check . ; \
	"$$venv/bin/mypy" api operator trainer dev cli ; \
	"$$venv/bin/python" -m pytest --doctest-modules operator/kubetune_operator dev/kubetune_dev cli/kubetune_cli tests

demo:
	@venv="$(VENV)"; "$$venv/bin/python" hack/demo.py
