#!/usr/bin/env bash
# Memory with a large key space: one node (release build) holding KEYS 100-byte values; prints
# its resident memory (VmRSS and the peak, VmHWM) after loading and after a snapshot.
#
#   bench/memory.sh                # 1,000,000 keys
#   KEYS=200000 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
scripts/build-release.sh
BIN="$PWD/target/release/raftkv"
data=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-mem.XXXXXX")
RUST_LOG=warn "$BIN" serve --data-dir "$data/n1" --raft-addr 127.0.0.1:18601 --http-addr 127.0.0.1:18602 \
  --bootstrap >"$data/node.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18602/readyz >/dev/null && break; sleep 0.2; done
rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/$pid/status"; echo; }
echo "loading $KEYS keys of 100 bytes"
start=$(date +%s)
"$BIN" bench --endpoint 127.0.0.1:18602 --keys "$KEYS" -c 64 --ops 1 --preload --json >/dev/null
echo "loaded in $(( $(date +%s) - start )) s"
echo -n "after load:     "; rss
"$BIN" admin --endpoint 127.0.0.1:18601 snapshot
echo -n "after snapshot: "; rss
du -sh "$data/n1" | awk '{print "data directory: " $1}'
