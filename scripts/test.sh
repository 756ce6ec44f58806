#!/usr/bin/env bash
# The whole test suite (the README's test command). Installs what the tests need first:
# Debian's `prometheus` package (promtool and a real Prometheus server), helm, and a
# Kubernetes control plane built from its Go modules. Run as root: the end-to-end test bed
# creates network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  packages+=(prometheus)
fi
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing Debian packages: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# Go-built tools, cached in .tools/bin: helm, and the Kubernetes control plane for the
# end-to-end test bed (minutes the first time, seconds after).
scripts/tools.sh >/dev/null
scripts/k8s-tools.sh >/dev/null

# The nemesis tests' linearizability checker (Go, porcupine): its own unit tests first.
(cd nemesis/lincheck && go test ./...)

cargo test --workspace --locked "$@"
