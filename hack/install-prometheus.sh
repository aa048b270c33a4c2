#!/usr/bin/env bash
# Make a `prometheus` binary available for the serving tests (dev/kubetune_dev/prometheus.py) and print
# its path as the last line. Uses the one on PATH if there is one, else Debian's package (needs root).
# Idempotent. It never starts the Debian service: each test starts its own server on a loopback port
# with a throwaway data directory.
set -euo pipefail
log() { echo "[install-prometheus] $*" >&2; }

if ! command -v prometheus >/dev/null; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "error: prometheus is not on PATH and installing it needs root (apt-get install prometheus)" >&2
    exit 1
  fi
  command -v apt-get >/dev/null || { echo "error: no apt-get; install prometheus yourself" >&2; exit 1; }
  log "installing Debian's prometheus package"
  # policy-rc.d exit 101 tells invoke-rc.d not to start the service the package ships.
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [[ -e "$policy" ]] && had_policy=1
  if [[ "$had_policy" == 0 ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2
fi
bin="$(command -v prometheus)"
log "$("$bin" --version 2>&1 | head -1)"
echo "$bin"
