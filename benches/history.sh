#!/usr/bin/env bash
# What history costs and what recovery takes, A/B in one run, on fresh
# hubs and a fresh redis-server on 127.0.0.1:
#  - fan-out, 1 group x 1,000 subscribers at max rate, 10 s, through Redis
#    with two instances, history on (AETHER_HISTORY_SIZE=100) and off (0);
#  - 100 groups x 50 subscribers x 10 msg/s through Redis: p99, on and off;
#  - the same 1 x 1,000 fan-out in memory, on and off;
#  - connects through Redis, 5,000 sockets in 100 groups over two hubs,
#    on and off: the rate, and Redis script calls per connect (with history
#    on, each new route's position is read once it is subscribed);
#  - recovery: 1,000 sockets that each missed 100 messages reconnect at
#    once (aether-load recover), in memory and through Redis;
#  - Redis memory per route with full history (MEMORY USAGE of the route's
#    stream and position keys) for AETHER_HISTORY_SIZE 10, 100 and 1,000.
# On and off alternate within each of ROUNDS rounds (the first rotating).
#
#   benches/history.sh [ROUNDS]     (default 3)
#
# Loopback only; every wait is bounded. Raw JSON in
# target/bench-results/history/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
load=target/release/aether-load
out=target/bench-results/history
mkdir -p "$out"
rm -f "$out"/*.json
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
hub() { # port size [env...]
  local port=$1 size=$2; shift 2
  env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error AETHER_SHUTDOWN_GRACE_SECS=1 \
    AETHER_HISTORY_SIZE="$size" "$@" target/release/aether-hub & pids+=($!)
  wait_port "$port"
}
redis_port=16499
redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null & pids+=($!)
  wait_port "$redis_port"
}
evalsha_calls() {
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p' | grep . || echo 0
}
two_hubs() { # size
  redis
  hub 18601 "$1" AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/"
  hub 18602 "$1" AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/"
  sleep 1
}
both=(--url ws://127.0.0.1:18601 --url ws://127.0.0.1:18602)

for round in $(seq "$rounds"); do
  sizes=(0 100)
  [ $((round % 2)) -eq 0 ] && sizes=(100 0)
  for size in "${sizes[@]}"; do
    two_hubs "$size"
    $load fanout "${both[@]}" --groups 1 --subscribers 1000 --duration 10 --warmup 2 2>/dev/null > "$out/redis-1x1000-$size-$round.json" || true
    $load fanout "${both[@]}" --groups 100 --subscribers 50 --rate 10 --duration 10 --warmup 2 2>/dev/null > "$out/redis-100x50-$size-$round.json" || true
    cleanup
    two_hubs "$size"
    calls=$(evalsha_calls)
    $load connect "${both[@]}" --sockets 5000 --groups 100 --hold 0.5 2>/dev/null | tail -n 1 > "$out/redis-connect-$size-$round.json" || true
    echo "{\"evalsha\": $(( $(evalsha_calls) - calls ))}" > "$out/redis-connect-calls-$size-$round.json"
    cleanup
    hub 18603 "$size"
    $load fanout --url ws://127.0.0.1:18603 --groups 1 --subscribers 1000 --duration 10 --warmup 2 2>/dev/null > "$out/memory-1x1000-$size-$round.json" || true
    cleanup
  done
done

hub 18604 100
$load recover --url ws://127.0.0.1:18604 --sockets 1000 --missed 100 2>/dev/null > "$out/recover-memory.json" || true
cleanup
two_hubs 100
$load recover "${both[@]}" --sockets 1000 --missed 100 2>/dev/null > "$out/recover-redis.json" || true
cleanup

# Redis memory per route with full history: one group, SIZE + 10 messages
# of the load tool's size (200-byte payload).
for size in 10 100 1000; do
  two_hubs "$size"
  $load fanout --url ws://127.0.0.1:18601 --groups 1 --subscribers 1 --rate $((size + 10)) --duration 1 --warmup 0 >/dev/null 2>&1 || true
  stream=$(redis-cli -p "$redis_port" --scan --pattern '*:history' | head -n 1)
  position=$(redis-cli -p "$redis_port" --scan --pattern '*:position' | head -n 1)
  entries=$(redis-cli -p "$redis_port" XLEN "$stream")
  bytes=$(( $(redis-cli -p "$redis_port" MEMORY USAGE "$stream" SAMPLES 0) + $(redis-cli -p "$redis_port" MEMORY USAGE "$position") ))
  echo "{\"size\": $size, \"entries\": $entries, \"bytes\": $bytes}" > "$out/memory-usage-$size.json"
  cleanup
done

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    try:
        return json.loads(open(f"{out}/{name}.json").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
problems = []
for name, figure, unit in [("redis-1x1000", "deliveries_per_sec", "deliveries/s"),
                           ("memory-1x1000", "deliveries_per_sec", "deliveries/s"),
                           ("redis-100x50", "p99", "ms p99"),
                           ("redis-connect", "connects_per_sec", "connects/s")]:
    ratios = []
    for r in range(1, rounds + 1):
        off, on = load(f"{name}-0-{r}"), load(f"{name}-100-{r}")
        if not off or not on:
            problems.append(f"{name} round {r}: missing report"); continue
        for d, label in ((off, "off"), (on, "on")):
            if d.get("loss") or d.get("order_violations"):
                problems.append(f"{name} {label} round {r}: loss {d['loss']}, order violations {d['order_violations']}")
        v = (lambda d: d["latency"]["p99_ms"]) if figure == "p99" else (lambda d: d[figure])
        ratios.append(v(on) / v(off))
        print(f"{name} round {r}: off {v(off):.2f}, on {v(on):.2f} {unit} (on/off {v(on)/v(off):.3f})")
    if ratios:
        print(f"{name}: median on/off {statistics.median(ratios):.3f}")
for size in (0, 100):
    calls = [load(f"redis-connect-calls-{size}-{r}") for r in range(1, rounds + 1)]
    calls = [c["evalsha"] / 5000 for c in calls if c]
    if calls:
        print(f"redis-connect, history {size}: {statistics.median(calls):.2f} script calls per connect")
for mode in ("memory", "redis"):
    d = load(f"recover-{mode}")
    if not d:
        problems.append(f"recover {mode}: missing report"); continue
    t = d["time_to_summary"]
    print(f"recover {mode}: {d['recovered_whole']}/{d['sockets']} recovered whole ({d['missed']} each) in {d['seconds']:.3f} s; "
          f"time to summary p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms, max {t['max_ms']:.1f} ms")
    if d["recovered_whole"] != d["sockets"]:
        problems.append(f"recover {mode}: not every socket recovered whole")
for size in (10, 100, 1000):
    d = load(f"memory-usage-{size}")
    if d:
        print(f"Redis memory, AETHER_HISTORY_SIZE={size}: {d['entries']} entries, {d['bytes']} bytes per route ({d['bytes']/max(d['entries'],1):.0f} per message)")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
