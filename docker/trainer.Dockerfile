# syntax=docker/dockerfile:1
# The trainer image: `python -m kubetune_trainer train --spec ...` in FineTuneJob pods, and the
# builtin model server `python -m kubetune_server` in ModelDeployment pods (runtime: builtin).
# Installs the `trainer` and `qlora` extras (torch, transformers, peft, datasets, accelerate,
# bitsandbytes, prometheus-client). Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/kubetune/trainer:0.1.0 .
#
# Python 3.11 on the CUDA base comes from uv's standalone CPython builds: Ubuntu 24.04 ships
# 3.12 only, and a portable build avoids a third-party apt repository.
# torch==2.15.0 from PyPI is a CUDA 13 build that brings its own CUDA libraries (nvidia-*-cu13
# wheels), so the base image only needs the same CUDA major; GPU nodes need a CUDA 13 driver.

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8
ARG PYTHON_VERSION=3.11.14

FROM ${UV_IMAGE} AS uv

# --- build: CPython and a virtualenv with the trainer dependencies ---------------------------
FROM ${CUDA_IMAGE} AS build
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY trainer/ trainer/
# Versions are pinned in pyproject.toml's extras.
RUN uv pip install --python /opt/venv/bin/python ".[trainer,qlora]"

# --- runtime: CUDA runtime + the virtualenv, as a non-root user ------------------------------
FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="Kubetune trainer (kubetune_trainer) and builtin model server (kubetune_server)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The venv's python is a symlink into /opt/python: both keep the paths they were built at.
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 kubetune \
    && useradd --system --uid 10001 --gid kubetune --create-home --home-dir /home/kubetune \
       --shell /usr/sbin/nologin kubetune
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kubetune \
    HF_HOME=/tmp/huggingface
WORKDIR /home/kubetune
USER 10001:10001
# 9400: trainer metrics (KUBETUNE_METRICS_PORT); 8000: the model server's default port.
EXPOSE 9400 8000
# The operator sets the command of every pod (`python -m kubetune_trainer train --spec ...`,
# `python -m kubetune_server ...`); this default only shows the trainer's usage.
CMD ["python", "-m", "kubetune_trainer", "--help"]
