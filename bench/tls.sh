#!/usr/bin/env bash
# TLS against plain text, side by side in one run: a 3-node cluster of one build on loopback,
# first plain, then with TLS on both listeners (HTTPS for clients, mutual TLS between peers),
# alternating for ROUNDS rounds so that machine drift hits both, the same load client
# (`raftkv bench`, over HTTPS with --cacert) driving both. Prints throughput and the servers'
# processor time per operation, and writes bench/results/<time>-tls.{md,json}.
#
#   bench/tls.sh                        # release build, 3 rounds of 8 s runs
#   ROUNDS=5 D=10s SCENARIOS="write64" bench/tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
D=${D:-8s} ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-"write1 write64 lin64 stale64"}
scripts/build-release.sh
BIN="$PWD/target/release/raftkv"
args_of() {
  case $1 in
    write1) echo "-c 1 --mix 0:100:0" ;;
    write64) echo "-c 64 --mix 0:100:0" ;;
    lin64) echo "-c 64 --mix 100:0:0" ;;
    stale64) echo "-c 64 --mix 100:0:0 --consistency stale" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}
certs=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-tls-bench.XXXXXX")
trap 'rm -rf "$certs"' EXIT
# One CA; one certificate for every node (they all listen on 127.0.0.1), server and client.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$certs/ca-key.pem" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=node \
  -keyout "$certs/node-key.pem" -out "$certs/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$certs/ext"
openssl x509 -req -in "$certs/node.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" -CAcreateserial \
  -days 2 -extfile "$certs/ext" -out "$certs/node.pem" 2>/dev/null
TLS_FLAGS=(--cert-file "$certs/node.pem" --key-file "$certs/node-key.pem"
  --peer-cert-file "$certs/node.pem" --peer-key-file "$certs/node-key.pem"
  --peer-trusted-ca-file "$certs/ca.pem" --peer-client-cert-auth)

cpu_ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | awk '{s+=$1} END {print s}'; }
out=$(mktemp "${TMPDIR:-/tmp}/raftkv-tls-bench.XXXXXX.txt")
run_one() { # plain|tls
  local mode=$1 data pids=() flags=() client=() scheme=http
  if [ "$mode" = tls ]; then flags=("${TLS_FLAGS[@]}"); client=(--cacert "$certs/ca.pem"); scheme=https; fi
  data=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-tls-bench.XXXXXX")
  for i in 1 2 3; do
    start=(--bootstrap); [ "$i" = 1 ] || start=(--join 127.0.0.1:19205)
    RUST_LOG=warn "$BIN" serve --worker-threads 1 --data-dir "$data/n$i" --raft-addr "127.0.0.1:1920$((i+4))" \
      --http-addr "127.0.0.1:1920$i" "${flags[@]}" "${start[@]}" >"$data/n$i.log" 2>&1 &
    pids+=($!)
    [ "$i" = 1 ] && sleep 1
  done
  for _ in $(seq 1 60); do
    voters=$(curl -s --cacert "$certs/ca.pem" "$scheme://127.0.0.1:19201/v1/status" | python3 -c 'import json,sys; print(sum(m["voter"] for m in json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
    [ "$voters" = 3 ] && break
    sleep 0.5
  done
  [ "$voters" = 3 ] || { echo "the $mode cluster did not form; logs in $data" >&2; exit 1; }
  local eps="$scheme://127.0.0.1:19201,$scheme://127.0.0.1:19202,$scheme://127.0.0.1:19203"
  "$BIN" bench --endpoint "$eps" "${client[@]}" --keys 100000 --preload -c 64 --mix 100:0:0 --duration 1s >/dev/null 2>&1
  for s in $SCENARIOS; do
    # shellcheck disable=SC2046
    set -- $(args_of "$s")
    before=$(cpu_ticks "${pids[@]}")
    tput=$("$BIN" bench --endpoint "$eps" "${client[@]}" "$@" --keys 100000 --duration "$D" --json 2>/dev/null |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput"]))')
    after=$(cpu_ticks "${pids[@]}")
    echo "$mode $s $tput $(( (after - before) * 10000 / (tput * ${D%s} + 1) ))" | tee -a "$out"
  done
  kill "${pids[@]}"; wait 2>/dev/null || true; rm -rf "$data"
}
for _ in $(seq 1 "$ROUNDS"); do run_one plain; run_one tls; done

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
python3 - "$out" "bench/results/$stamp-tls" "$D" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
base, d, rounds = sys.argv[2], sys.argv[3], sys.argv[4]
runs = {}
for mode, scen, tput, us in rows:
    runs.setdefault(scen, {}).setdefault(mode, []).append((int(tput), int(us)))
md = [f"# TLS against plain text ({rounds} alternating rounds of {d}; bench/tls.sh)", "",
      "3 nodes on loopback, one worker thread each; TLS = HTTPS on the client port and mutual TLS",
      "between peers (P-256 certificates); the same `raftkv bench` drives both.", "",
      "| scenario | plain ops/s (median) | TLS ops/s (median) | TLS / plain | plain µs CPU/op | TLS µs CPU/op | rounds (plain / TLS) |",
      "|---|---|---|---|---|---|---|"]
out = {}
for scen, m in runs.items():
    p, t = m.get("plain", []), m.get("tls", [])
    mp, mt = statistics.median(x[0] for x in p), statistics.median(x[0] for x in t)
    cp, ct = statistics.median(x[1] for x in p), statistics.median(x[1] for x in t)
    md.append(f"| {scen} | {mp:.0f} | {mt:.0f} | {mt / mp:.2f} | {cp:.0f} | {ct:.0f} | "
              f"{', '.join(str(x[0]) for x in p)} / {', '.join(str(x[0]) for x in t)} |")
    out[scen] = {"plain": p, "tls": t, "ratio": mt / mp}
open(base + ".md", "w").write("\n".join(md) + "\n")
open(base + ".json", "w").write(json.dumps(out, indent=1))
print("\n".join(md))
PY
rm -f "$out"
