#!/usr/bin/env bash
# Memory of large listings: one node, KEYS values of 1 MiB under big/, then PARALLEL
# concurrent `GET /v1/kv?prefix=big%2F&limit=1000`, repeated; prints the node's resident set
# before, its peak (VmHWM) after, the bytes and keys of one page, and writes
# bench/results/<time>-list-memory.md. The page's byte bound (--max-list-bytes, 4 MiB by
# default) is what keeps the peak flat; pass e.g. MAX_LIST_BYTES=1073741824 to see it without.
#
#   bench/list-memory.sh                 # release build, 300 keys, 4 at once, 5 times
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-300} PARALLEL=${PARALLEL:-4} REPEAT=${REPEAT:-5}
MAX_LIST_BYTES=${MAX_LIST_BYTES:-}
scripts/build-release.sh
BIN="$PWD/target/release/raftkv"
data=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-list-memory.XXXXXX")
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
flags=()
[ -n "$MAX_LIST_BYTES" ] && flags=(--max-list-bytes "$MAX_LIST_BYTES")
RUST_LOG=warn "$BIN" serve --data-dir "$data/n" --raft-addr 127.0.0.1:19305 --http-addr 127.0.0.1:19301 \
  --bootstrap "${flags[@]}" >"$data/n.log" 2>&1 &
pid=$!
url=http://127.0.0.1:19301
for _ in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
head -c 786432 /dev/urandom | base64 -w0 >"$data/value" # exactly 1 MiB of text
for i in $(seq 1 "$KEYS"); do
  curl -sf -X PUT --data-binary "@$data/value" "$url/v1/kv/big/$(printf %05d "$i")" >/dev/null
done
rss() { awk -v k="$1" '$1 == k":" {print int($2 / 1024)}' "/proc/$pid/status"; }
before=$(rss VmRSS)
# The peak from here on (writing 5 resets VmHWM to the current resident set).
echo 5 >"/proc/$pid/clear_refs"
page=$(curl -s "$url/v1/kv?prefix=big%2F&limit=1000" | python3 -c \
  'import json,sys; b=sys.stdin.buffer.read(); d=json.loads(b); print(len(b), len(d["items"]), d["next_start"] is not None)')
for _ in $(seq 1 "$REPEAT"); do
  for _ in $(seq 1 "$PARALLEL"); do curl -s -o /dev/null "$url/v1/kv?prefix=big%2F&limit=1000" & done
  wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
done
peak=$(rss VmHWM)
read -r bytes items more <<<"$page"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
report="bench/results/$stamp-list-memory.md"
{
  echo "# Memory of large listings (bench/list-memory.sh)"
  echo
  echo "One node; $KEYS values of 1 MiB under big/; $REPEAT times $PARALLEL concurrent"
  echo "\`GET /v1/kv?prefix=big%2F&limit=1000\`; --max-list-bytes ${MAX_LIST_BYTES:-default (4 MiB)}."
  echo
  echo "| RSS before (MiB) | peak RSS (MiB) | one page: bytes | keys | next_start set |"
  echo "|---|---|---|---|---|"
  echo "| $before | $peak | $bytes | $items | $more |"
} | tee "$report"
