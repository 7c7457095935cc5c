#!/usr/bin/env bash
# One Redis's ceiling: the highest publish rate two hubs push through one
# redis-server (or a 3-master cluster) before the p99 of delivery exceeds
# 50 ms, with history off and on, and where the bottleneck is.
#
# Shape: 200 groups x 5 subscribers over two hubs, each group's publisher
# at a fixed rate, 2 s warm-up + 10 s; the rate per group steps up through
# RATES (messages/s per group). Per step: publishes/s and deliveries/s the
# load tool measured, p50/p99, loss, and the CPU (in cores, /proc) of
# redis-server (the masters' sum on a cluster), the two hubs and the load
# tool. Off and on alternate at each step. A step whose p99 is over 50 ms
# (or that loses a message) ends that side's sweep.
#
#   benches/ceiling.sh [single|cluster]     (default single)
#
# CEILING_RATES="50 100 ..." overrides the steps. Loopback only; every run
# is bounded. Writes target/bench-results/ceiling/<mode>.csv and prints
# each side's ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-single}
read -r -a rates <<<"${CEILING_RATES:-25 50 100 150 200 250 300 350 400 500 600}"
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
out=target/bench-results/ceiling
mkdir -p "$out"
csv=$out/$mode.csv
hub_bin=target/release/aether-hub
load=target/release/aether-load
work=$(mktemp -d)
pids=() redis_pids=()
cleanup() { # the hubs (a bare `wait` would wait for Redis too)
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'cleanup; kill "${redis_pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
sum_ticks() { local n=0 p; for p in "$@"; do n=$((n + $(ticks "$p"))); done; echo "$n"; }

redis_ports=(16471)
[ "$mode" = cluster ] && redis_ports=(16471 16472 16473)
for p in "${redis_ports[@]}"; do
  mkdir -p "$work/$p"
  extra=()
  [ "$mode" = cluster ] && extra=(--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000)
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$p" "${extra[@]}" >/dev/null &
  redis_pids+=($!)
  wait_port "$p"
done
if [ "$mode" = cluster ]; then
  redis-cli --cluster create "${redis_ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
  for _ in $(seq 100); do
    ok=1
    for p in "${redis_ports[@]}"; do redis-cli -p "$p" CLUSTER INFO | grep -q 'cluster_state:ok' || ok=0; done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  seeds=127.0.0.1:16471,127.0.0.1:16472,127.0.0.1:16473
  at=("AETHER_REDIS_CLUSTER=$seeds")
else
  at=(AETHER_REDIS_URL=redis://127.0.0.1:16471/)
fi

# step SIZE RATE -> one CSV row; returns 1 when over the ceiling
step() {
  local size=$1 rate=$2 p
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" flushall >/dev/null 2>&1 || true; done
  for p in 18471 18472; do
    env AETHER_BIND="127.0.0.1:$p" AETHER_LOG=error AETHER_HISTORY_SIZE="$size" "${at[@]}" "$hub_bin" &
    pids+=($!)
    wait_port "$p"
  done
  sleep 1
  "$load" fanout --url ws://127.0.0.1:18471 --url ws://127.0.0.1:18472 --groups 200 --subscribers 5 \
    --rate "$rate" --duration 10 --warmup 2 >"$work/run.json" 2>/dev/null &
  local lp=$!
  # CPU over 9 s inside the measured 10 (after ~1 s of set-up and the
  # 2 s warm-up).
  sleep 3.5
  local r0 h0 l0 r1 h1 l1
  r0=$(sum_ticks "${redis_pids[@]}") h0=$(sum_ticks "${pids[@]}") l0=$(ticks "$lp")
  sleep 9
  r1=$(sum_ticks "${redis_pids[@]}") h1=$(sum_ticks "${pids[@]}") l1=$(ticks "$lp" 2>/dev/null || echo "$l0")
  wait "$lp" || true
  cleanup
  python3 - "$size" "$rate" "$((r1 - r0))" "$((h1 - h0))" "$((l1 - l0))" "$(getconf CLK_TCK)" "$work/run.json" <<'PY' | tee -a "$csv"
import json, sys
size, rate, r, h, l, hz, path = sys.argv[1:8]
try:
    d = json.loads(open(path).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    d = None
cores = lambda t: int(t) / int(hz) / 9
if d is None:
    print(f"{'on' if int(size) else 'off'},{rate},0,0,0,0,-1,{cores(r):.2f},{cores(h):.2f},{cores(l):.2f}")
else:
    lat = d["latency"]
    print(f"{'on' if int(size) else 'off'},{rate},{d['published_per_sec']:.0f},{d['deliveries_per_sec']:.0f},"
          f"{lat['p50_ms']:.1f},{lat['p99_ms']:.1f},{d['loss']},{cores(r):.2f},{cores(h):.2f},{cores(l):.2f}")
PY
  tail -n 1 "$csv" | awk -F, '{ exit !($6 >= 0 && $6 <= 50 && $7 == 0) }'
}

echo "history,rate_per_group,publishes_per_sec,deliveries_per_sec,p50_ms,p99_ms,loss,redis_cores,hub_cores,load_cores" >"$csv"
off_done=0 on_done=0
for rate in "${rates[@]}"; do
  [ "$off_done" = 1 ] && [ "$on_done" = 1 ] && break
  [ "$off_done" = 0 ] && { step 0 "$rate" || off_done=1; }
  [ "$on_done" = 0 ] && { step 100 "$rate" || on_done=1; }
  echo "ceiling $mode: rate $rate per group done" >&2
done

python3 - "$csv" "$mode" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for side in ("off", "on"):
    ok = [r for r in rows if r["history"] == side and 0 <= float(r["p99_ms"]) <= 50 and r["loss"] == "0"]
    if not ok:
        print(f"{sys.argv[2]}, history {side}: no step under 50 ms p99"); continue
    best = max(ok, key=lambda r: float(r["publishes_per_sec"]))
    print(f"{sys.argv[2]}, history {side}: ceiling {float(best['publishes_per_sec']):,.0f} publishes/s, "
          f"{float(best['deliveries_per_sec']):,.0f} deliveries/s at {best['rate_per_group']}/s per group "
          f"(p99 {best['p99_ms']} ms; cores: Redis {best['redis_cores']}, hubs {best['hub_cores']}, load tool {best['load_cores']})")
PY
