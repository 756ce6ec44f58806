#!/usr/bin/env bash
# The release build: exactly what the Dockerfile's builder stage runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace
