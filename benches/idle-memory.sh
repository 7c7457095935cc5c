#!/usr/bin/env bash
# Hub RSS per idle socket, beside a baseline (warp's stock ws() filter) in
# the same run, and the same hub serving wss:// (rustls) with a throwaway
# certificate made here with openssl. Sockets are held by a separate
# process (aether-load).
#
#   benches/idle-memory.sh [SOCKETS]      (default 10000)
#
# Loopback only. Prints one line per server and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-10000}
cargo build --release --quiet --bin aether-hub --bin aether-load --example warp_ws_baseline
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A throwaway CA and a certificate for localhost signed by it.
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench-ca -keyout "$certs/ca.key" -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$certs/key.pem" -out "$certs/req.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$certs/ext"
openssl x509 -req -in "$certs/req.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" \
  -CAcreateserial -days 1 -extfile "$certs/ext" -out "$certs/cert.pem" 2>/dev/null

measure() { # name url command...
  local name=$1 url=$2; shift 2
  local port=${url##*:}
  "$@" & local pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  local json
  json=$(target/release/aether-load connect --url "$url" --tls-ca "$certs/ca.pem" --sockets "$sockets" \
           --parallel 100 --server-pid "$pid" --hold 1 --settle 2 2>/dev/null | tail -n 1)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  local per
  per=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(round(d['hub_rss_per_socket_bytes']/1024, 2), d['established'], round(d['connects_per_sec']))" "$json")
  echo "$per"
}

hub=$(measure aether-hub ws://127.0.0.1:18180 env AETHER_BIND=127.0.0.1:18180 AETHER_LOG=error target/release/aether-hub)
base=$(measure warp-ws-baseline ws://127.0.0.1:18181 target/release/examples/warp_ws_baseline 127.0.0.1:18181)
tls=$(measure aether-hub-tls wss://localhost:18182 env AETHER_BIND=127.0.0.1:18182 AETHER_LOG=error \
  AETHER_TLS_CERT_FILE="$certs/cert.pem" AETHER_TLS_KEY_FILE="$certs/key.pem" target/release/aether-hub)
read -r hub_kib hub_n hub_rate <<<"$hub"
read -r base_kib base_n base_rate <<<"$base"
read -r tls_kib tls_n tls_rate <<<"$tls"
echo "sockets held: hub $hub_n, baseline $base_n, hub over TLS $tls_n"
echo "KiB RSS per idle socket: aether-hub $hub_kib, warp ws() baseline $base_kib, aether-hub over TLS $tls_kib"
python3 -c "print('ratio hub/baseline: %.3f, TLS/plain: %.2f' % ($hub_kib/$base_kib, $tls_kib/$hub_kib))"
echo "connects/s (100 in flight): aether-hub $hub_rate, baseline $base_rate, aether-hub over TLS $tls_rate"
