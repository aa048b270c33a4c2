#!/usr/bin/env bash
# Build the local Kubernetes control plane used by the test suite and the demo, from Go modules.
#
# Why build: this machine (and CI) reaches only package registries, so release tarballs from
# dl.k8s.io / GitHub are out of reach, but the Go module proxy serves every source we need.
# Binaries land in $KUBETUNE_CACHE/bin/<component>-<version>/ and are reused when present, so
# only the first (cold) run pays for compiling. Prints the asset directory on stdout (last line).
#
#   KUBETUNE_CACHE   cache root (default ~/.cache/kubetune)
#   K8S_VERSION      k8s.io/kubernetes release (default below)
#   ETCD_VERSION     go.etcd.io/etcd/server/v3 release
#   KWOK_VERSION     sigs.k8s.io/kwok release
#   HELM_VERSION     helm.sh/helm/v3 release (built only with --with-helm)
#   GATEWAY_API_VERSION, JOBSET_VERSION, KUBEFLOW_TRAINER_VERSION   CRDs the tests install
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
HELM_VERSION="${HELM_VERSION:-3.22.0}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-1.6.3}"
JOBSET_VERSION="${JOBSET_VERSION:-0.10.1}"
KUBEFLOW_TRAINER_VERSION="${KUBEFLOW_TRAINER_VERSION:-2.0.0}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
K8S_MINOR="${K8S_VERSION#*.}"; K8S_MINOR="${K8S_MINOR%%.*}"
WITH_HELM=0
for arg in "$@"; do
  case "$arg" in
    --with-helm) WITH_HELM=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

command -v go >/dev/null || { echo "error: Go toolchain not found (needed to build the control plane)" >&2; exit 1; }

ASSETS="$CACHE/bin/k8s-$K8S_VERSION"
mkdir -p "$ASSETS" "$CACHE/go/build" "$CACHE/go/mod" "$CACHE/src"
# One Go build and module cache for every component: the k8s binaries share most packages.
export GOCACHE="$CACHE/go/build" GOMODCACHE="$CACHE/go/mod" GOFLAGS="-buildvcs=false -trimpath"
export CGO_ENABLED=0 GOTOOLCHAIN=local

log() { echo "[build-control-plane] $*" >&2; }

k8s_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
need_k8s=0
for b in "${k8s_binaries[@]}"; do [[ -x "$ASSETS/$b" ]] || need_k8s=1; done

if [[ $need_k8s == 1 ]]; then
  log "building Kubernetes v$K8S_VERSION (${k8s_binaries[*]}); the cold build takes a while"
  src="$CACHE/src/k8s-$K8S_VERSION"
  mkdir -p "$src"
  staging_version="v0.${K8S_VERSION#*.}"
  (
    cd "$src"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces that do not
    # resolve outside its own tree: a wrapper module replaces each with the published release.
    # The list is read from that release's go.mod, since it changes between minors.
    upstream_mod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    {
      echo "module kubetune.local/controlplane"
      echo
      grep -E '^go [0-9.]+$' "$upstream_mod"
      grep -E '^godebug ' "$upstream_mod" || true
      echo
      echo "require k8s.io/kubernetes v$K8S_VERSION"
      echo
      echo "replace ("
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$upstream_mod" \
        | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > go.mod
    pkgs=()
    for b in "${k8s_binaries[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    # Pin the version on every package: a bare `go get pkg` would move to the newest release.
    go get "${pkgs[@]/%/@v$K8S_VERSION}" >&2
    build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    ldflags=""
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
      ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date -X $p.gitCommit=kubetune-module-build"
    done
    go build -ldflags "-s -w $ldflags" -o "$ASSETS/" "${pkgs[@]}"
  )
fi

if [[ ! -x "$ASSETS/etcd" ]]; then
  log "building etcd v$ETCD_VERSION"
  src="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$src"
  (
    cd "$src"
    printf 'module kubetune.local/etcd\n\ngo 1.24\n' > go.mod
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
    go build -ldflags "-s -w" -o "$ASSETS/etcd" go.etcd.io/etcd/server/v3
  )
fi

if [[ ! -x "$ASSETS/kwok" ]]; then
  log "building kwok v$KWOK_VERSION"
  GOBIN="$ASSETS" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
fi

if [[ ! -f "$ASSETS/gateway-api-crds/gateway.networking.k8s.io_httproutes.yaml" ]]; then
  # Tests apply HTTPRoutes, which needs only the Gateway API CRDs (standard channel). The module
  # zip from the Go proxy carries them; nothing is built.
  log "fetching Gateway API v$GATEWAY_API_VERSION CRDs"
  dir="$(go mod download -json "sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$ASSETS/gateway-api-crds"
  cp "$dir"/config/crd/standard/gateway.networking.k8s.io_{gateways,gatewayclasses,httproutes}.yaml "$ASSETS/gateway-api-crds/"
  chmod u+w "$ASSETS/gateway-api-crds/"*
fi

# Multi-node FineTuneJobs may run as a JobSet or a Kubeflow TrainJob: the tests dry-run those manifests
# against the projects' own CRDs, taken from their module zips at the pinned release like Gateway API's.
module_dir() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }
if [[ ! -f "$ASSETS/jobset-crds/jobset.x-k8s.io_jobsets.yaml" ]]; then
  log "fetching JobSet v$JOBSET_VERSION CRDs"
  dir="$(module_dir "sigs.k8s.io/jobset@v$JOBSET_VERSION")"
  mkdir -p "$ASSETS/jobset-crds"
  cp "$dir"/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml "$ASSETS/jobset-crds/"
  chmod u+w "$ASSETS/jobset-crds/"*
fi
if [[ ! -f "$ASSETS/kubeflow-trainer-crds/trainer.kubeflow.org_trainjobs.yaml" ]]; then
  log "fetching Kubeflow Trainer v$KUBEFLOW_TRAINER_VERSION CRDs"
  dir="$(module_dir "github.com/kubeflow/trainer/v2@v$KUBEFLOW_TRAINER_VERSION")"
  mkdir -p "$ASSETS/kubeflow-trainer-crds"
  cp "$dir"/manifests/base/crds/trainer.kubeflow.org_{trainjobs,trainingruntimes,clustertrainingruntimes}.yaml \
    "$ASSETS/kubeflow-trainer-crds/"
  chmod u+w "$ASSETS/kubeflow-trainer-crds/"*
fi

if [[ $WITH_HELM == 1 && ! -x "$ASSETS/helm" ]]; then
  log "building helm v$HELM_VERSION"
  GOBIN="$ASSETS" go install -ldflags "-s -w -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
fi

echo "$ASSETS"
