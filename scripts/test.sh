#!/usr/bin/env bash
# The whole test suite (the README's test command, and all that CI runs): formatting, lints,
# the release build, then the tests. Installs what they need first: rustfmt and clippy,
# Debian's `prometheus` package (promtool and a real Prometheus server), helm, and a
# Kubernetes control plane built from its Go modules. Run as root: the end-to-end test bed
# creates network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== release build (the Dockerfile's builder command)"
scripts/build-release.sh

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

echo "== tests"
cargo test --workspace --locked "$@"
