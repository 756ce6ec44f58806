#!/usr/bin/env bash
# raftkv vs etcd, side by side, on this machine: a 3-node raftkv cluster and a 3-member etcd
# cluster (Debian's etcd-server), both on loopback with data on the same disk, both fsyncing
# before they acknowledge, driven by the same load client (`raftkv bench`; etcd through its v3
# JSON gateway), alternating runs so that machine drift hits both. Also measures the ceiling:
# a do-nothing axum server. Writes a table and JSON to bench/results/.
#
# Both get the same processor budget: THREADS runtime threads a process (raftkv's
# --worker-threads, etcd's GOMAXPROCS); three nodes share this machine's cores, so one each
# (the default) serves both best here.
#
#   bench/compare-etcd.sh            # 10 s per run
#   DURATION=30s THREADS=2 bench/compare-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
KEYS=${KEYS:-100000}
THREADS=${THREADS:-1}

if ! command -v etcd >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
fi
scripts/build-release.sh
BIN="$PWD/target/release/raftkv"
data=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

# raftkv: node 1 bootstraps, 2 and 3 join.
for i in 1 2 3; do
  mode=(--bootstrap); [ "$i" = 1 ] || mode=(--join 127.0.0.1:18101)
  RUST_LOG=warn "$BIN" serve --worker-threads "$THREADS" --data-dir "$data/raftkv$i" --raft-addr 127.0.0.1:1810$((i+4)) \
    --http-addr 127.0.0.1:1810$i "${mode[@]}" >"$data/raftkv$i.log" 2>&1 &
  pids+=($!)
  [ "$i" = 1 ] && sleep 1
done
# etcd: three members, default fsync behaviour.
cluster="e1=http://127.0.0.1:18201,e2=http://127.0.0.1:18202,e3=http://127.0.0.1:18203"
for i in 1 2 3; do
  GOMAXPROCS=$THREADS etcd --name "e$i" --data-dir "$data/etcd$i" \
    --listen-client-urls "http://127.0.0.1:1830$i" --advertise-client-urls "http://127.0.0.1:1830$i" \
    --listen-peer-urls "http://127.0.0.1:1820$i" --initial-advertise-peer-urls "http://127.0.0.1:1820$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$data/etcd$i.log" 2>&1 &
  pids+=($!)
done
"$BIN" noop-server --http-addr 127.0.0.1:18400 >/dev/null 2>&1 &
pids+=($!)

RKV=127.0.0.1:18101,127.0.0.1:18102,127.0.0.1:18103
ETCD=127.0.0.1:18301,127.0.0.1:18302,127.0.0.1:18303
for _ in $(seq 1 60); do
  n=$(curl -s http://127.0.0.1:18101/v1/status | grep -o '"voter":true' | wc -l || true)
  e=$(curl -s -X POST http://127.0.0.1:18301/v3/kv/range -d '{"key":"AA=="}' | grep -c header || true)
  [ "$n" = 3 ] && [ "$e" = 1 ] && break
  sleep 1
done

out="$data/runs.jsonl"
run() { # label target endpoints args...
  local label=$1 target=$2 eps=$3; shift 3
  "$BIN" bench --target "$target" --endpoint "$eps" --keys "$KEYS" --value-size 100 \
    --duration "$DURATION" --json --label "$label" "$@" | tee -a "$out"
}
both() { # label args... (alternating: raftkv, etcd)
  local label=$1; shift
  run "$label" raftkv "$RKV" "$@"
  run "$label" etcd "$ETCD" "$@"
}

echo "preloading $KEYS keys into both" >&2
"$BIN" bench --target raftkv --endpoint "$RKV" --keys "$KEYS" -c 64 --ops 1 --preload --json >/dev/null
"$BIN" bench --target etcd --endpoint "$ETCD" --keys "$KEYS" -c 64 --ops 1 --preload --json >/dev/null

both "write c=1" -c 1 --mix 0:100:0
both "write c=16" -c 16 --mix 0:100:0
both "write c=64" -c 64 --mix 0:100:0
both "write c=256" -c 256 --mix 0:100:0
both "linearizable read c=16" -c 16 --mix 100:0:0 --consistency linearizable
both "linearizable read c=64" -c 64 --mix 100:0:0 --consistency linearizable
both "stale read c=64" -c 64 --mix 100:0:0 --consistency stale
both "90/10 read/write c=64" -c 64 --mix 90:10:0 --consistency linearizable
run "ceiling (no-op axum) c=64" raftkv 127.0.0.1:18400 -c 64 --mix 100:0:0 --consistency stale

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
python3 - "$out" "bench/results/$stamp" "$THREADS" "$DURATION" "$KEYS" <<'PY'
import json, os, platform, subprocess, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base, threads, duration, keys = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def cpu():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return platform.processor()
machine = {"cpu": cpu(), "cores": os.cpu_count(),
           "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
           "kernel": platform.release(),
           "etcd": subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
           "threads_per_process": threads, "duration": duration}
by = {}
for r in runs:
    by.setdefault(r["label"], {})[r["target"]] = r
ceiling = next((r for r in runs if r["label"].startswith("ceiling")), None)
rows, table = [], []
for label, t in by.items():
    if label.startswith("ceiling"):
        continue
    a, b = t.get("raftkv"), t.get("etcd")
    ratio = a["throughput"] / b["throughput"] if a and b and b["throughput"] else None
    rows.append({"scenario": label, "raftkv": a, "etcd": b, "ratio": ratio})
    f = lambda r, k: f'{r["latency_ms"][k]:.2f}' if r else "-"
    table.append(f'| {label} | {a["throughput"]:.0f} | {f(a,"p50")} | {f(a,"p99")} | {b["throughput"]:.0f} | {f(b,"p50")} | {f(b,"p99")} | {ratio:.2f}x |')
stale = by.get("stale read c=64", {}).get("raftkv")
ceil_note = ""
if stale and ceiling:
    ceil_note = f'Stale reads at c=64: {stale["throughput"]:.0f} ops/s = {100*stale["throughput"]/ceiling["throughput"]:.0f}% of a do-nothing axum server ({ceiling["throughput"]:.0f} ops/s).'
md = ["# raftkv vs etcd", "", f'Machine: {machine["cpu"]}, {machine["cores"]} cores, {machine["memory_gib"]} GiB, kernel {machine["kernel"]}; {machine["etcd"]}.',
      f'Three processes a system on loopback, {threads} runtime thread(s) each (raftkv --worker-threads, etcd GOMAXPROCS); {duration} a run, raftkv then etcd per scenario; 100-byte values over {keys} keys.', "",
      "| scenario | raftkv ops/s | p50 ms | p99 ms | etcd ops/s | p50 ms | p99 ms | raftkv/etcd |",
      "|---|---|---|---|---|---|---|---|"] + table + ["", ceil_note, ""]
open(base + ".md", "w").write("\n".join(md))
json.dump({"machine": machine, "scenarios": rows, "ceiling": ceiling}, open(base + ".json", "w"), indent=2)
print("\n".join(md))
print(f"written: {base}.md, {base}.json")
PY
