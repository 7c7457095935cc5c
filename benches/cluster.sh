#!/usr/bin/env bash
# Redis Cluster against a single Redis, A/B in one run, on fresh hubs and
# fresh redis-server processes on 127.0.0.1:
#  - fan-out, 1 group x 1,000 subscribers at max rate, 10 s, two hubs;
#  - 100 groups x 50 subscribers x 10 msg/s, two hubs: p99;
# through one redis-server, then through a 3-master cluster (no replicas:
# on 2 cores they would only take CPU from the masters). Redis CPU
# (used_cpu_user + used_cpu_sys of INFO cpu) is read on every Redis
# process before and after each run, so the per-message Redis cost and its
# spread over the masters come out of the same runs. Single and cluster
# alternate within each of ROUNDS rounds (the first rotating).
#
#   benches/cluster.sh [ROUNDS]     (default 3)
#
# Loopback only; every wait is bounded. Raw JSON in
# target/bench-results/cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
load=target/release/aether-load
out=target/bench-results/cluster
mkdir -p "$out"
rm -f "$out"/*.json
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); rm -rf "${work:?}"/*; }
trap 'cleanup; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
hub() { # port [env...]
  local port=$1; shift
  env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error AETHER_SHUTDOWN_GRACE_SECS=1 "$@" target/release/aether-hub & pids+=($!)
  wait_port "$port"
}
redis() { # port [extra redis-server args...]
  local port=$1; shift
  mkdir -p "$work/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir "$work/$port" "$@" >/dev/null & pids+=($!)
  wait_port "$port"
}
single_ports=(16510)
cluster_ports=(16511 16512 16513)
start_single() {
  redis 16510
  hub 18611 AETHER_REDIS_URL=redis://127.0.0.1:16510/
  hub 18612 AETHER_REDIS_URL=redis://127.0.0.1:16510/
}
start_cluster() {
  for p in "${cluster_ports[@]}"; do
    redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
  done
  redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
  for _ in $(seq 100); do
    ok=1
    for p in "${cluster_ports[@]}"; do
      redis-cli -p "$p" CLUSTER INFO | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  local seeds=127.0.0.1:16511,127.0.0.1:16512,127.0.0.1:16513
  hub 18611 AETHER_REDIS_CLUSTER="$seeds"
  hub 18612 AETHER_REDIS_CLUSTER="$seeds"
}
cpu() { # ports... -> one JSON list of CPU seconds
  local first=1
  printf '['
  for p in "$@"; do
    [ "$first" = 1 ] || printf ','
    first=0
    redis-cli -p "$p" INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.3f", s }'
  done
  printf ']'
}
both=(--url ws://127.0.0.1:18611 --url ws://127.0.0.1:18612)
measure() { # mode name args...
  local mode=$1 name=$2; shift 2
  local ports=("${single_ports[@]}")
  [ "$mode" = cluster ] && ports=("${cluster_ports[@]}")
  local before after
  before=$(cpu "${ports[@]}")
  $load fanout "${both[@]}" "$@" 2>/dev/null > "$out/$name.json" || true
  after=$(cpu "${ports[@]}")
  echo "{\"before\": $before, \"after\": $after}" > "$out/$name.cpu.json"
}

for round in $(seq "$rounds"); do
  modes=(single cluster)
  [ $((round % 2)) -eq 0 ] && modes=(cluster single)
  for mode in "${modes[@]}"; do
    "start_$mode"
    sleep 1
    measure "$mode" "1x1000-$mode-$round" --groups 1 --subscribers 1000 --duration 10 --warmup 2
    measure "$mode" "100x50-$mode-$round" --groups 100 --subscribers 50 --rate 10 --duration 10 --warmup 2
    cleanup
  done
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
for name, unit in [("1x1000", "deliveries/s"), ("100x50", "ms p99")]:
    ratios = []
    for r in range(1, rounds + 1):
        single, cluster = load(f"{name}-single-{r}"), load(f"{name}-cluster-{r}")
        if not single or not cluster:
            problems.append(f"{name} round {r}: missing report"); continue
        for d, label in ((single, "single"), (cluster, "cluster")):
            if d.get("loss") or d.get("order_violations"):
                problems.append(f"{name} {label} round {r}: loss {d['loss']}, order violations {d['order_violations']}")
        v = (lambda d: d["latency"]["p99_ms"]) if unit == "ms p99" else (lambda d: d["deliveries_per_sec"])
        # Higher is better for throughput, lower for p99: the ratio is
        # cluster's performance as a share of single Redis's either way.
        ratio = v(cluster) / v(single) if unit != "ms p99" else v(single) / v(cluster)
        ratios.append(ratio)
        line = f"{name} round {r}: single {v(single):.2f}, cluster {v(cluster):.2f} {unit} (cluster/single {ratio:.3f})"
        for mode, d in (("single", single), ("cluster", cluster)):
            c = load(f"{name}-{mode}-{r}.cpu")
            if c:
                used = [a - b for a, b in zip(c["after"], c["before"])]
                # The CPU window also holds the 2 s warm-up at the same rate.
                msgs = d["published_per_sec"] * (d["seconds"] + 2)
                per = f", {1e6 * sum(used) / msgs:.1f} us Redis CPU per published message" if msgs else ""
                line += f"\n    {mode} Redis CPU s per process: {', '.join(f'{u:.2f}' for u in used)}{per}"
        print(line)
    if ratios:
        print(f"{name}: median cluster/single {statistics.median(ratios):.3f}")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
