#!/usr/bin/env bash
# Copy the CRDs (crds/, the single source of truth for the API) into the Helm chart, which renders
# them from charts/kubetune/files/crds/ behind `crds.enabled`. Run after every change to crds/;
# tests/chart/test_chart_crds.py fails while the copies differ.
#
#   hack/sync-chart-crds.sh           copy
#   hack/sync-chart-crds.sh --check   only compare; exit 1 and name the files that differ
set -euo pipefail
cd "$(dirname "$0")/.."

src=crds
dst=charts/kubetune/files/crds
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [[ $check == 1 ]]; then
  # -r: also reports a copy left behind after its source was deleted.
  if ! diff -r "$src" "$dst" >/dev/null; then
    echo "chart CRDs differ from $src/ (run hack/sync-chart-crds.sh):" >&2
    diff -rq "$src" "$dst" >&2 || true
    exit 1
  fi
  exit 0
fi

mkdir -p "$dst"
# Start clean so a CRD removed from crds/ disappears from the chart too.
rm -f "$dst"/*.yaml
cp "$src"/*.yaml "$dst"/
echo "copied $(ls "$src"/*.yaml | wc -l) CRDs to $dst" >&2
