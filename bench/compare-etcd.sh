#!/usr/bin/env bash
# raftkv vs etcd, side by side, on this machine: a 3-node raftkv cluster and a 3-member etcd
# cluster (Debian's etcd-server), both on loopback with data on the same disk, both fsyncing
# before they acknowledge, driven by the same load client (`raftkv bench`; etcd through its v3
# JSON gateway), alternating runs so that machine drift hits both. Also measures the ceiling:
# a do-nothing axum server. Writes a table and JSON to bench/results/.
#
# The machines here are shared and noisy (the same run hours apart differs by 20-60%), so the
# whole set of scenarios runs ROUNDS times: the table gives each system's median, the ratio of
# the medians and the range of the per-round ratios, and the processor time the three server
# processes used per operation (from /proc, utime + stime), which noise moves much less than
# throughput.
#
# Both get the same processor budget: THREADS runtime threads a process (raftkv's
# --worker-threads, etcd's GOMAXPROCS); three nodes share this machine's cores, so one each
# (the default) serves both best here.
#
#   bench/compare-etcd.sh            # 3 rounds, 10 s a run
#   DURATION=30s ROUNDS=1 THREADS=2 bench/compare-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
KEYS=${KEYS:-100000}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}

if ! command -v etcd >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
fi
scripts/build-release.sh
BIN="$PWD/target/release/raftkv"
data=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-bench.XXXXXX")
pids=() raftkv_pids=() etcd_pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

# raftkv: node 1 bootstraps, 2 and 3 join.
for i in 1 2 3; do
  mode=(--bootstrap); [ "$i" = 1 ] || mode=(--join 127.0.0.1:18105)  # node 1's peer port
  RUST_LOG=warn "$BIN" serve --worker-threads "$THREADS" --data-dir "$data/raftkv$i" --raft-addr 127.0.0.1:1810$((i+4)) \
    --http-addr 127.0.0.1:1810$i "${mode[@]}" >"$data/raftkv$i.log" 2>&1 &
  pids+=($!) raftkv_pids+=($!)
  [ "$i" = 1 ] && sleep 1
done
# etcd: three members, default fsync behaviour.
cluster="e1=http://127.0.0.1:18201,e2=http://127.0.0.1:18202,e3=http://127.0.0.1:18203"
for i in 1 2 3; do
  GOMAXPROCS=$THREADS etcd --name "e$i" --data-dir "$data/etcd$i" \
    --listen-client-urls "http://127.0.0.1:1830$i" --advertise-client-urls "http://127.0.0.1:1830$i" \
    --listen-peer-urls "http://127.0.0.1:1820$i" --initial-advertise-peer-urls "http://127.0.0.1:1820$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$data/etcd$i.log" 2>&1 &
  pids+=($!) etcd_pids+=($!)
done
"$BIN" noop-server --http-addr 127.0.0.1:18400 >/dev/null 2>&1 &
pids+=($!) noop_pid=$!

RKV=127.0.0.1:18101,127.0.0.1:18102,127.0.0.1:18103
ETCD=127.0.0.1:18301,127.0.0.1:18302,127.0.0.1:18303
for _ in $(seq 1 60); do
  n=$(curl -s http://127.0.0.1:18101/v1/status | grep -o '"voter":true' | wc -l || true)
  e=$(curl -s -X POST http://127.0.0.1:18301/v3/kv/range -d '{"key":"AA=="}' | grep -c header || true)
  [ "$n" = 3 ] && [ "$e" = 1 ] && break
  sleep 1
done
# A server that could not start (a port already taken, say) would fail every run after this.
for p in "${pids[@]}"; do
  if ! kill -0 "$p" 2>/dev/null; then
    echo "a server exited at start; its last words:" >&2
    tail -n 3 "$data"/*.log >&2
    exit 1
  fi
done

out="$data/runs.jsonl"
hz=$(getconf CLK_TCK)
ticks() { # processor time (user + system, in clock ticks) of the given processes so far
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
run() { # label target endpoints "server pids" args...
  local label=$1 target=$2 eps=$3 servers=$4 before line cpu; shift 4
  before=$(ticks $servers)
  line=$("$BIN" bench --target "$target" --endpoint "$eps" --keys "$KEYS" --value-size 100 \
    --duration "$DURATION" --json --label "$label" "$@")
  cpu=$(awk -v t=$(( $(ticks $servers) - before )) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')
  echo "{\"round\":$round,\"server_cpu_seconds\":$cpu,${line#\{}" | tee -a "$out"
}
both() { # label args... (alternating: raftkv, etcd)
  local label=$1; shift
  run "$label" raftkv "$RKV" "${raftkv_pids[*]}" "$@"
  run "$label" etcd "$ETCD" "${etcd_pids[*]}" "$@"
}

echo "preloading $KEYS keys into both" >&2
"$BIN" bench --target raftkv --endpoint "$RKV" --keys "$KEYS" -c 64 --ops 1 --preload --json >/dev/null
"$BIN" bench --target etcd --endpoint "$ETCD" --keys "$KEYS" -c 64 --ops 1 --preload --json >/dev/null

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  both "write c=1" -c 1 --mix 0:100:0
  both "write c=16" -c 16 --mix 0:100:0
  both "write c=64" -c 64 --mix 0:100:0
  both "write c=256" -c 256 --mix 0:100:0
  both "linearizable read c=16" -c 16 --mix 100:0:0 --consistency linearizable
  both "linearizable read c=64" -c 64 --mix 100:0:0 --consistency linearizable
  both "stale read c=64" -c 64 --mix 100:0:0 --consistency stale
  both "90/10 read/write c=64" -c 64 --mix 90:10:0 --consistency linearizable
  run "ceiling (no-op axum) c=64" raftkv 127.0.0.1:18400 "$noop_pid" -c 64 --mix 100:0:0 --consistency stale
done

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
python3 - "$out" "bench/results/$stamp" "$THREADS" "$DURATION" "$KEYS" "$ROUNDS" <<'PY'
import json, os, platform, statistics, subprocess, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base, threads, duration, keys, rounds = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
def cpu():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return platform.processor()
machine = {"cpu": cpu(), "cores": os.cpu_count(),
           "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
           "kernel": platform.release(),
           "etcd": subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
           "threads_per_process": threads, "duration": duration, "rounds": rounds}
by = {}  # label -> target -> round -> run
for r in runs:
    r["cpu_us_per_op"] = 1e6 * r["server_cpu_seconds"] / r["ok"] if r["ok"] else None
    by.setdefault(r["label"], {}).setdefault(r["target"], {})[r["round"]] = r
med = statistics.median
def summary(per_round):
    rs = list(per_round.values())
    cpus = [r["cpu_us_per_op"] for r in rs if r["cpu_us_per_op"] is not None]
    return {"throughput": med(r["throughput"] for r in rs),
            "p50_ms": med(r["latency_ms"]["p50"] for r in rs),
            "p99_ms": med(r["latency_ms"]["p99"] for r in rs),
            "cpu_us_per_op": med(cpus) if cpus else None,
            "runs": rs}
def ratios(a, b):  # per round, where both ran
    return [a[k]["throughput"] / b[k]["throughput"] for k in sorted(a) if k in b and b[k]["throughput"]]
ceiling_label = next((l for l in by if l.startswith("ceiling")), None)
ceiling = summary(by[ceiling_label]["raftkv"]) if ceiling_label else None
rows, table = [], []
for label, t in by.items():
    if label == ceiling_label or "raftkv" not in t or "etcd" not in t:
        continue
    a, b = summary(t["raftkv"]), summary(t["etcd"])
    per_round = ratios(t["raftkv"], t["etcd"])
    ratio = a["throughput"] / b["throughput"] if b["throughput"] else None
    rows.append({"scenario": label, "raftkv": a, "etcd": b, "ratio": ratio, "round_ratios": per_round})
    c = lambda s: f'{s["cpu_us_per_op"]:.0f}' if s["cpu_us_per_op"] is not None else "-"
    spread = f'{min(per_round):.2f}-{max(per_round):.2f}x' if per_round else "-"
    table.append(f'| {label} | {a["throughput"]:.0f} | {a["p50_ms"]:.2f} | {a["p99_ms"]:.2f} | {c(a)} '
                 f'| {b["throughput"]:.0f} | {b["p50_ms"]:.2f} | {b["p99_ms"]:.2f} | {c(b)} | {ratio:.2f}x | {spread} |')
ceil_note = ""
stale = by.get("stale read c=64", {}).get("raftkv")
if stale and ceiling:
    share = ratios(stale, by[ceiling_label]["raftkv"])
    ceil_note = (f'Stale reads at c=64: {summary(stale)["throughput"]:.0f} ops/s = '
                 f'{100 * med(share):.0f}% (rounds: {", ".join(f"{100 * x:.0f}%" for x in share)}) '
                 f'of a do-nothing axum server ({ceiling["throughput"]:.0f} ops/s).')
md = ["# raftkv vs etcd", "",
      f'Machine: {machine["cpu"]}, {machine["cores"]} cores, {machine["memory_gib"]} GiB, kernel {machine["kernel"]}; {machine["etcd"]}.',
      f'Three processes a system on loopback, {threads} runtime thread(s) each (raftkv --worker-threads, etcd GOMAXPROCS); '
      f'100-byte values over {keys} keys; {duration} a run, raftkv then etcd per scenario, all scenarios {rounds} time(s) over.',
      "Each figure is the median over the rounds; the ratio is of the medians, with the range of the per-round ratios beside it. "
      "CPU µs/op: processor time (user + system) of the three server processes per operation served.", "",
      "| scenario | raftkv ops/s | p50 ms | p99 ms | CPU µs/op | etcd ops/s | p50 ms | p99 ms | CPU µs/op | raftkv/etcd | per round |",
      "|---|---|---|---|---|---|---|---|---|---|---|"] + table + ["", ceil_note, ""]
open(base + ".md", "w").write("\n".join(md))
json.dump({"machine": machine, "scenarios": rows, "ceiling": ceiling}, open(base + ".json", "w"), indent=2)
print("\n".join(md))
print(f"written: {base}.md, {base}.json")
PY
