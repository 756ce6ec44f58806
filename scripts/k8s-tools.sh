#!/usr/bin/env bash
# Builds a real Kubernetes control plane from its Go modules, at pinned versions, into
# .tools/bin: kube-apiserver, kube-controller-manager and kubectl (k8s.io/kubernetes) and etcd
# (go.etcd.io/etcd). The first build takes minutes; later runs reuse the binaries (a stamp
# file records the versions). Prints the bin directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="$root/.tools/bin"
src="$root/.tools/src"
mkdir -p "$bin" "$src"

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
stamp="k8s=$K8S_VERSION etcd=$ETCD_VERSION"
if [ "$(cat "$bin/.k8s.version" 2>/dev/null)" = "$stamp" ] \
  && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] \
  && [ -x "$bin/kubectl" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
export GOFLAGS=-mod=mod

# k8s.io/kubernetes replaces its staging modules with local paths, which `go install` refuses;
# a wrapper module that pins each of them to the matching published version builds it.
staging="v0${K8S_VERSION#v1}"
k8s="$src/k8s"
mkdir -p "$k8s"
cd "$k8s"
cat > go.mod <<MOD
module raftkv.dev/testbed/k8s

go 1.26.0
MOD
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
{
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  grep -E '^\s*k8s.io/[a-z0-9.-]+ => ./staging/src/k8s.io/' "$gomod" \
    | sed -E "s#^\s*(k8s.io/[a-z0-9.-]+) => ./staging/src/k8s.io/[a-z0-9.-]+#replace \1 => \1 $staging#"
} >> go.mod
echo "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (minutes on a cold cache)" >&2
go get "k8s.io/kubernetes@$K8S_VERSION" >&2
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  ld="$ld -X $p.gitTreeState=clean"
done
go build -ldflags "$ld" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl >&2

etcd="$src/etcd"
mkdir -p "$etcd"
cd "$etcd"
cat > go.mod <<MOD
module raftkv.dev/testbed/etcd

go 1.26.0
MOD
echo "building etcd $ETCD_VERSION" >&2
go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2

echo "$stamp" > "$bin/.k8s.version"
echo "$bin"
