#!/usr/bin/env bash
# Reproduces the table of issue 4 (docs/benchmarks/: fanout.md, redis.md,
# connects.md, memory.md): the hub and the bare fan-out floor driven by
# aether-load in the same run, in memory and through Redis.
# Loopback only; every step is bounded in time. Prints one line per figure
# and writes the raw JSON reports to target/bench-results/.
#
#   benches/run.sh            (about two minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin aether-hub --bin aether-load --example fanout_floor
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
out=target/bench-results
mkdir -p "$out"
load=target/release/aether-load
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
hub() { # port [env...]
  local port=$1; shift
  env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error "$@" target/release/aether-hub & pids+=($!)
  wait_port "$port"
}
stop_all() { cleanup; pids=(); }
report() { # name json-file python-expression
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
name, path, expr = sys.argv[1:4]
d = json.loads(open(path).read().strip().splitlines()[-1])
print(f"{name}: " + eval(expr, {"d": d}))
PY
}

echo "== fan-out, 1 group x 1,000 subscribers, max rate, in memory, with the floor"
target/release/examples/fanout_floor 127.0.0.1:18300 & pids+=($!); wait_port 18300
$load fanout --url ws://127.0.0.1:18300 --groups 1 --subscribers 1000 --duration 10 --warmup 2 2>/dev/null > "$out/floor.json"
stop_all
hub 18301
$load fanout --url ws://127.0.0.1:18301 --groups 1 --subscribers 1000 --duration 10 --warmup 2 2>/dev/null > "$out/fanout-memory.json"
stop_all
report floor "$out/floor.json" '"%.0f deliveries/s, loss %d" % (d["deliveries_per_sec"], d["loss"])'
report hub-memory "$out/fanout-memory.json" '"%.0f deliveries/s, loss %d, order violations %d" % (d["deliveries_per_sec"], d["loss"], d["order_violations"])'
python3 -c "import json;f=json.loads(open('$out/floor.json').read().splitlines()[-1]);h=json.loads(open('$out/fanout-memory.json').read().splitlines()[-1]);print('hub / floor: %.2f' % (h['deliveries_per_sec']/f['deliveries_per_sec']))"

echo "== through Redis, two instances"
redis_port=16399
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null & pids+=($!)
wait_port "$redis_port"
hub 18311 AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/"
hub 18312 AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/"
sleep 1
$load fanout --url ws://127.0.0.1:18311 --url ws://127.0.0.1:18312 --groups 1 --subscribers 1000 --duration 10 --warmup 2 2>/dev/null > "$out/fanout-redis.json"
report hub-redis-1x1000 "$out/fanout-redis.json" '"%.0f deliveries/s, loss %d, order violations %d" % (d["deliveries_per_sec"], d["loss"], d["order_violations"])'
$load fanout --url ws://127.0.0.1:18311 --url ws://127.0.0.1:18312 --groups 100 --subscribers 50 --rate 10 --duration 10 --warmup 2 2>/dev/null > "$out/fanout-redis-100x50.json"
report hub-redis-100x50x10 "$out/fanout-redis-100x50.json" '"loss %d of %d, p50 %.2f ms, p99 %.2f ms" % (d["loss"], d["expected"], d["latency"]["p50_ms"], d["latency"]["p99_ms"])'
stop_all

echo "== direct round trips, 100 pairs, in memory"
hub 18321
$load rtt --url ws://127.0.0.1:18321 --pairs 100 --duration 10 --warmup 2 2>/dev/null > "$out/rtt.json"
report rtt "$out/rtt.json" '"%.0f round trips/s, p99 %.2f ms" % (d["round_trips_per_sec"], d["rtt"]["p99_ms"])'
stop_all

echo "== churn: 2,000 subscribers churning every 10-200 ms beside 1,000 stable ones, in memory"
hub 18341
$load churn --url ws://127.0.0.1:18341 --groups 10 --stable 1000 --churners 2000 --rate 20 --duration 10 2>/dev/null > "$out/churn.json"
report churn "$out/churn.json" '"%.0f reconnects/s, stable lost %d of %d, stable p99 %.2f ms" % (d["reconnects_per_sec"], d["stable_loss"], d["stable_expected"], d["latency"]["p99_ms"])'
stop_all

echo "== connects and idle memory, 10,000 sockets, 100 in flight, in memory"
# Each socket in its own group: the cost of a connect and of an idle socket.
hub 18331
$load connect --url ws://127.0.0.1:18331 --sockets 10000 --groups 10000 --parallel 100 --server-pid "${pids[-1]}" --hold 1 2>/dev/null > "$out/connect.json"
report connect-own-groups "$out/connect.json" '"%.0f connects/s, %.2f KiB RSS per idle socket, %d failed" % (d["connects_per_sec"], d["hub_rss_per_socket_bytes"]/1024, d["failed"])'
stop_all
# 100 groups of 100: every connect also announces a join to up to 99 sockets.
hub 18332
$load connect --url ws://127.0.0.1:18332 --sockets 10000 --groups 100 --parallel 100 --server-pid "${pids[-1]}" --hold 1 2>/dev/null > "$out/connect-groups.json"
report connect-100-groups "$out/connect-groups.json" '"%.0f connects/s, %.2f KiB RSS per idle socket, %d failed" % (d["connects_per_sec"], d["hub_rss_per_socket_bytes"]/1024, d["failed"])'
stop_all
