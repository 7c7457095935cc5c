#!/usr/bin/env bash
# Hub RSS per idle socket, beside a baseline (warp's stock ws() filter) in
# the same run. Sockets are held by a separate process (aether-load).
#
#   benches/idle-memory.sh [SOCKETS]      (default 10000)
#
# Loopback only. Prints one line per server and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-10000}
cargo build --release --quiet --bin aether-hub --bin aether-load --example warp_ws_baseline
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

measure() { # name port command...
  local name=$1 port=$2; shift 2
  "$@" & local pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  local json
  json=$(target/release/aether-load connect --url "ws://127.0.0.1:$port" --sockets "$sockets" \
           --parallel 100 --server-pid "$pid" --hold 1 --settle 2 2>/dev/null | tail -n 1)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  local per
  per=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(round(d['hub_rss_per_socket_bytes']/1024, 2), d['established'], round(d['connects_per_sec']))" "$json")
  echo "$per"
}

hub=$(measure aether-hub 18180 env AETHER_BIND=127.0.0.1:18180 AETHER_LOG=error target/release/aether-hub)
base=$(measure warp-ws-baseline 18181 target/release/examples/warp_ws_baseline 127.0.0.1:18181)
read -r hub_kib hub_n hub_rate <<<"$hub"
read -r base_kib base_n base_rate <<<"$base"
echo "sockets held: hub $hub_n, baseline $base_n"
echo "KiB RSS per idle socket: aether-hub $hub_kib, warp ws() baseline $base_kib"
python3 -c "print('ratio hub/baseline: %.3f' % ($hub_kib/$base_kib))"
echo "connects/s (100 in flight): aether-hub $hub_rate, baseline $base_rate"
