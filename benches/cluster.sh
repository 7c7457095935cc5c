#!/usr/bin/env bash
# Redis Cluster against a single Redis, A/B in one run, on fresh hubs and
# fresh redis-server processes on 127.0.0.1:
#  - fan-out, 1 group x 1,000 subscribers at max rate, 14 s, two hubs;
#  - 100 groups x 50 subscribers x 10 msg/s, 14 s, two hubs: p99;
# through one redis-server, then through a 3-master cluster (no replicas:
# on 2 cores they would only take CPU from the masters). Redis CPU
# (used_cpu_user + used_cpu_sys of INFO cpu) is read on every Redis
# process before and after each run, so the per-message Redis cost and its
# spread over the masters come out of the same runs. Single and cluster
# alternate within each of ROUNDS rounds (the first rotating). Last, the
# Redis cost of one message apart from the hub (cost_model), for the
# capacity estimate in docs/benchmarks/cluster.md.
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
start_single() { # [hub env...]
  redis 16510
  hub 18611 AETHER_REDIS_URL=redis://127.0.0.1:16510/ "$@"
  hub 18612 AETHER_REDIS_URL=redis://127.0.0.1:16510/ "$@"
}
start_cluster() { # [hub env...]
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
  hub 18611 AETHER_REDIS_CLUSTER="$seeds" "$@"
  hub 18612 AETHER_REDIS_CLUSTER="$seeds" "$@"
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
  # Redis CPU is read over seconds 6 to 14 of the run, inside the measured
  # window (connects and the 2 s warm-up come first), so joins, presence
  # and subscribes stay out of the per-message cost.
  $load fanout "${both[@]}" "$@" --duration 14 --warmup 2 2>/dev/null > "$out/$name.json" &
  local load_pid=$!
  sleep 6
  before=$(cpu "${ports[@]}")
  sleep "$cpu_window"
  after=$(cpu "${ports[@]}")
  wait "$load_pid" || true
  echo "{\"before\": $before, \"after\": $after, \"seconds\": $cpu_window}" > "$out/$name.cpu.json"
}
cpu_window=8

# What one message costs Redis, apart from the hub: SPUBLISH of a 400-byte
# message (the size of the load tool's messages) by redis-benchmark
# (pipelined, as the hubs publish) to k subscribed connections, k = 0, 2,
# 8; Redis CPU per message, so cost = per command + k x per subscriber.
cost_model() {
  redis 16520
  local payload
  payload=$(head -c 400 /dev/zero | tr '\0' x)
  for k in 0 2 8; do
    local subs=()
    for _ in $(seq "$k"); do
      redis-cli -p 16520 SSUBSCRIBE bench:chan >/dev/null & subs+=($!)
    done
    sleep 0.5
    local before after
    before=$(cpu 16520)
    redis-benchmark -p 16520 -n 300000 -P 16 -c 4 -q SPUBLISH bench:chan "$payload" >/dev/null
    after=$(cpu 16520)
    echo "{\"k\": $k, \"messages\": 300000, \"before\": $before, \"after\": $after}" > "$out/cost-$k.json"
    kill "${subs[@]}" 2>/dev/null || true
  done
  cleanup
}

for round in $(seq "$rounds"); do
  modes=(single cluster)
  [ $((round % 2)) -eq 0 ] && modes=(cluster single)
  for mode in "${modes[@]}"; do
    "start_$mode"
    sleep 1
    measure "$mode" "1x1000-$mode-$round" --groups 1 --subscribers 1000
    measure "$mode" "100x50-$mode-$round" --groups 100 --subscribers 50 --rate 10
    cleanup
  done
done
# The same 100 x 50 x 10 once more per mode with history off, for what a
# message costs Redis without the history script.
for mode in single cluster; do
  "start_$mode" AETHER_HISTORY_SIZE=0
  sleep 1
  measure "$mode" "100x50-$mode-nohistory" --groups 100 --subscribers 50 --rate 10
  cleanup
done
cost_model

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
                msgs = d["published_per_sec"] * c["seconds"]
                per = f", {1e6 * sum(used) / msgs:.2f} us Redis CPU per published message" if msgs else ""
                share = "/".join(f"{100 * u / sum(used):.0f}%" for u in used) if sum(used) else "-"
                line += f"\n    {mode} Redis CPU s per process over {c['seconds']} s: {', '.join(f'{u:.2f}' for u in used)} ({share}){per}"
        print(line)
    if ratios:
        print(f"{name}: median cluster/single {statistics.median(ratios):.3f}")
for mode in ("single", "cluster"):
    d, c = load(f"100x50-{mode}-nohistory"), load(f"100x50-{mode}-nohistory.cpu")
    if not d or not c:
        problems.append(f"100x50 {mode} history off: missing report"); continue
    used = [a - b for a, b in zip(c["after"], c["before"])]
    msgs = d["published_per_sec"] * c["seconds"]
    print(f"100x50 {mode}, history off: p99 {d['latency']['p99_ms']:.2f} ms, lost {d['loss']}, "
          f"Redis CPU s per process over {c['seconds']} s: {', '.join(f'{u:.2f}' for u in used)}, "
          f"{1e6 * sum(used) / msgs:.2f} us Redis CPU per published message")
costs = [load(f"cost-{k}") for k in (0, 2, 8)]
if all(costs):
    points = [(c["k"], 1e6 * (c["after"][0] - c["before"][0]) / c["messages"]) for c in costs]
    n = len(points)
    mk, mc = sum(k for k, _ in points) / n, sum(c for _, c in points) / n
    slope = sum((k - mk) * (c - mc) for k, c in points) / sum((k - mk) ** 2 for k, _ in points)
    print("Redis CPU per SPUBLISH (400 B) by subscribed connections: "
          + ", ".join(f"k={k}: {c:.2f} us" for k, c in points)
          + f"; fit: {mc - slope * mk:.2f} us per message + {slope:.2f} us per subscriber")
else:
    problems.append("cost model: missing report")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
