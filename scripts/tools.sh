#!/usr/bin/env bash
# Builds the Go-based tools the tests use, at pinned versions, into .tools/bin (kept between
# runs: a second run takes a second). Prints the bin directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.tools/bin"
mkdir -p "$bin"

HELM_VERSION=v3.22.0
HELM_KUBE_MINOR=35

# build NAME STAMP PACKAGE@VERSION [LDFLAGS]: go install, remembered in a stamp file.
build() {
  local name=$1 stamp=$2 pkg=$3 ldflags=${4:-}
  if [ -x "$bin/$name" ] && [ "$(cat "$bin/.$name.version" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  echo "building $name ($stamp)" >&2
  GOBIN="$bin" GOFLAGS=-mod=mod go install -ldflags "$ldflags" "$pkg" >&2
  echo "$stamp" > "$bin/.$name.version"
}

# Stamped like helm's own release build: its version, and the Kubernetes version it assumes
# when no cluster is asked (helm template, lint).
helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/chartutil pkg/lint/rules; do
  helm_ld="$helm_ld -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_KUBE_MINOR"
done
build helm "$HELM_VERSION-k1.$HELM_KUBE_MINOR" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$helm_ld"
echo "$bin"
