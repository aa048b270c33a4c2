#!/usr/bin/env bash
# Make an `mlflow server` available for the tracking tests (dev/kubetune_dev/mlflow_server.py) and print
# the virtualenv's path as the last line. The server is a development tool like Prometheus: it lives in
# its own virtualenv (the full `mlflow` package pulls in Flask, SQLAlchemy, alembic, pandas, ... that the
# trainer never needs), keyed by the version, built once and reused. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[install-mlflow] $*" >&2; }

# Keep in step with the trainer's mlflow-skinny pin in pyproject.toml (client and server of one release).
VERSION="${KUBETUNE_MLFLOW_VERSION:-3.17.2}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
venv="$CACHE/mlflow-venv/$VERSION"
if [[ ! -f "$venv/.complete" ]]; then
  log "creating $venv (first time only)"
  start=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q "mlflow==$VERSION" >&2
  touch "$venv/.complete"
  log "installed mlflow $VERSION in $((SECONDS - start)) s"
fi
log "mlflow $VERSION: $venv"
echo "$venv"
