#!/usr/bin/env bash
# Install everything the tests and the demo need, reusing caches under ~/.cache/kubetune:
#   - a Python virtualenv keyed by the hash of pyproject.toml (torch & co. install once per change),
#     with this checkout installed into it in editable mode;
#   - the control-plane binaries (hack/build-control-plane.sh), Prometheus and an MLflow server's virtualenv.
# Prints the virtualenv's path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
log() { echo "[setup] $*" >&2; }
need() { command -v "$1" >/dev/null || { echo "error: '$1' not found: $2" >&2; exit 1; }; }

need python3 "install Python 3.11+"
need go "install Go 1.25+ (it builds the local Kubernetes control plane from Go modules)"
need openssl "apt-get install openssl (the test control plane makes its certificates with it)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ required" >&2; exit 1; }

key="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest()[:12])')"
venv="$CACHE/venv/py$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')-$key"
if [[ ! -f "$venv/.complete" ]]; then
  log "creating $venv (first time: torch and friends are large, this takes a few minutes)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q ".[operator,trainer,dev,cli]"
  touch "$venv/.complete"
fi
# Point the shared venv at this checkout (cheap: no dependency resolution).
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e . >&2
log "virtualenv: $venv"

bash hack/build-control-plane.sh --with-helm >/dev/null
# Canary analysis tests and the demo scrape real server processes with a real Prometheus.
bash hack/install-prometheus.sh >/dev/null
# The tracking tests run a real `mlflow server` from its own cached virtualenv (first time: a few minutes).
bash hack/install-mlflow.sh >/dev/null
echo "$venv"
