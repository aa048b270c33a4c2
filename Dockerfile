# syntax=docker/dockerfile:1
# The operator image: `python -m kubetune_operator`. It installs only the `operator` extra (kopf,
# kubernetes, croniter; pyyaml from the base dependencies): no torch, so it stays small
# (tests/chart/test_images.py checks the install line). Build from the repository root:
#   docker build -t ghcr.io/kubetune/operator:0.1.0 .
# The trainer and the builtin model server have their own image: docker/trainer.Dockerfile.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a virtualenv with the package and its operator dependencies ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# setuptools finds packages under api/, operator/, trainer/ and dev/ (pyproject.toml); dev/ holds the
# development programs (the local executor) and is not copied. The trainer's sources are plain
# Python and import nothing heavy at install time.
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY trainer/ trainer/
# The local package, whose extras pin the operator's dependencies (pyproject.toml): DL3013 wants
# `name==version`, which a path install cannot have.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[operator]"

# --- runtime: the virtualenv on a clean base, as a non-root user -----------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="Kubetune operator: FineTuneJob and ModelDeployment controllers (Kopf)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kubetune \
    && useradd --system --uid 10001 --gid kubetune --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kubetune
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The chart's default metrics port (KUBETUNE_METRICS_PORT).
EXPOSE 8080
ENTRYPOINT ["python", "-m", "kubetune_operator"]
