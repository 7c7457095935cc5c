#!/usr/bin/env bash
# Round trips with and without acknowledgements, in one run: two hubs on
# one Redis, P pairs ping-ponging direct messages across them (the load
# tool's `rtt`), alternating runs without and with `--acks` (every ping
# asks for an acknowledgement, and the time from each send to its ack is
# reported beside the round trip). Per run: round trips/s, p50/p99 round
# trip, p50/p99 send to ack, and the hubs' CPU time per round trip
# (/proc/PID/stat). Loopback only; every run is bounded (2 s warm-up + 10 s).
#
#   benches/rtt-acks.sh [ROUNDS] [PAIRS]      (3 rounds, 100 pairs)
#
# Writes target/ab/rtt-acks.csv and prints the medians and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
pairs=${2:-100}
out=target/ab
mkdir -p "$out"
cargo build --release --quiet --bin aether-hub --bin aether-load
hub_bin=target/release/aether-hub
load=target/release/aether-load

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

redis_port=16498
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'cleanup; kill $redis_pid 2>/dev/null || true' EXIT
wait_port "$redis_port"

run() { # NAME [load args...] -> appends a CSV row
  local name=$1 ticks0=0 ticks1=0 pid port
  shift
  redis-cli -p "$redis_port" flushall >/dev/null
  for port in 18421 18422; do
    env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/" "$hub_bin" &
    pids+=($!)
    wait_port "$port"
  done
  sleep 1
  for pid in "${pids[@]}"; do ticks0=$((ticks0 + $(cpu_ticks "$pid"))); done
  "$load" rtt --url ws://127.0.0.1:18421 --url ws://127.0.0.1:18422 --pairs "$pairs" --duration 10 --warmup 2 "$@" 2>/dev/null > "$out/rtt.json"
  for pid in "${pids[@]}"; do ticks1=$((ticks1 + $(cpu_ticks "$pid"))); done
  cleanup
  python3 - "$name" "$((ticks1 - ticks0))" "$(getconf CLK_TCK)" "$out/rtt.json" <<'PY' | tee -a "$out/rtt-acks.csv"
import json, sys
name, ticks, hz, path = sys.argv[1:5]
d = json.loads(open(path).read().strip().splitlines()[-1])
# The hubs' CPU over the whole run (warm-up included) per round trip of
# the whole run: round trips/s over the measured 10 s times 12 s.
trips = d["round_trips_per_sec"] * 12
cpu_us = int(ticks) / int(hz) * 1e6 / max(trips, 1)
ack = d.get("send_to_ack") or {}
us = lambda h, q: f"{h[q] * 1000:.0f}" if h else ""
print(f"{name},{d['round_trips_per_sec']:.0f},{us(d['rtt'], 'p50_ms')},{us(d['rtt'], 'p99_ms')},{us(ack, 'p50_ms')},{us(ack, 'p99_ms')},{cpu_us:.2f}")
PY
}

echo "run,round_trips_per_sec,rtt_p50_us,rtt_p99_us,ack_p50_us,ack_p99_us,hub_cpu_us_per_round_trip" > "$out/rtt-acks.csv"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    run plain >/dev/null; run acks --acks >/dev/null
  else
    run acks --acks >/dev/null; run plain >/dev/null
  fi
  echo "round $round/$rounds done" >&2
done

python3 - "$out/rtt-acks.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = lambda who, key: statistics.median(float(r[key]) for r in rows if r["run"] == who and r[key] != "")
p, a = med("plain", "round_trips_per_sec"), med("acks", "round_trips_per_sec")
pc, ac = med("plain", "hub_cpu_us_per_round_trip"), med("acks", "hub_cpu_us_per_round_trip")
print("round trips/s: plain %.0f, acks %.0f, ratio %.3f" % (p, a, a / p))
print("rtt p50/p99 us: plain %.0f/%.0f, acks %.0f/%.0f" % (med("plain", "rtt_p50_us"), med("plain", "rtt_p99_us"), med("acks", "rtt_p50_us"), med("acks", "rtt_p99_us")))
print("send to ack p50/p99 us: %.0f/%.0f" % (med("acks", "ack_p50_us"), med("acks", "ack_p99_us")))
print("hub CPU us per round trip: plain %.2f, acks %.2f (plain/acks %.3f)" % (pc, ac, pc / ac))
PY
