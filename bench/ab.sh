#!/usr/bin/env bash
# Two builds of raftkv side by side: a 3-node cluster of each in turn on loopback, the same load
# client (`raftkv bench` of the second build) driving both, alternating for ROUNDS rounds so that
# machine drift hits both. Prints throughput and the three servers' processor time per
# operation (utime + stime from /proc) for each run. For a change that must not move
# performance (a refactor), next to bench/compare-etcd.sh, which compares against etcd.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY                 # 3 rounds of 8 s runs
#   ROUNDS=5 D=10s SCENARIOS="lin64" bench/ab.sh old new
set -euo pipefail
[ $# = 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD=$1 NEW=$2 CLIENT=$2
D=${D:-8s} ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-"write1 write64 lin64"}
args_of() {
  case $1 in
    write1) echo "-c 1 --mix 0:100:0" ;;
    write64) echo "-c 64 --mix 0:100:0" ;;
    lin64) echo "-c 64 --mix 100:0:0" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}
cpu_ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | awk '{s+=$1} END {print s}'; }
run_one() { # binary label
  local bin=$1 label=$2 data pids=()
  data=$(mktemp -d "${TMPDIR:-/tmp}/raftkv-ab.XXXXXX")
  # --join takes node 1's peer address; builds before the security work took its HTTP address.
  local seed=127.0.0.1:19105
  "$bin" serve --help | grep -q 'peer addresses' || seed=127.0.0.1:19101
  for i in 1 2 3; do
    mode=(--bootstrap); [ "$i" = 1 ] || mode=(--join "$seed")
    RUST_LOG=warn "$bin" serve --worker-threads 1 --data-dir "$data/n$i" --raft-addr "127.0.0.1:1910$((i+4))" \
      --http-addr "127.0.0.1:1910$i" "${mode[@]}" >"$data/n$i.log" 2>&1 &
    pids+=($!)
    [ "$i" = 1 ] && sleep 1
  done
  for _ in $(seq 1 60); do
    voters=$(curl -s 127.0.0.1:19101/v1/status | python3 -c 'import json,sys; print(sum(m["voter"] for m in json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
    [ "$voters" = 3 ] && break
    sleep 0.5
  done
  # Every key exists before the runs that read (its own run, so its writes are not counted).
  "$CLIENT" bench --endpoint 127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103 --keys 100000 --preload \
    -c 64 --mix 100:0:0 --duration 1s >/dev/null 2>&1
  for s in $SCENARIOS; do
    # shellcheck disable=SC2046
    set -- $(args_of "$s")
    before=$(cpu_ticks "${pids[@]}")
    tput=$("$CLIENT" bench --endpoint 127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103 "$@" --keys 100000 \
      --duration "$D" --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput"]))')
    after=$(cpu_ticks "${pids[@]}")
    echo "$label $s $tput ops/s $(( (after - before) * 10000 / (tput * ${D%s}) )) us/op"
  done
  kill "${pids[@]}"; wait 2>/dev/null || true; rm -rf "$data"
}
for _ in $(seq 1 "$ROUNDS"); do run_one "$OLD" old; run_one "$NEW" new; done
