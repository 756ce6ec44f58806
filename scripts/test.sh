#!/usr/bin/env bash
# The whole test suite (the README's test command). Installs what the tests need first:
# Debian's `prometheus` package, for promtool and a real Prometheus server.
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

# Go-built tools (helm), cached in .tools/bin.
scripts/tools.sh >/dev/null

cargo test --workspace --locked "$@"
