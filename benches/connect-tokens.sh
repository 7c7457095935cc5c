#!/usr/bin/env bash
# Connects/s with identity tokens verified at every upgrade (HS256 against
# AETHER_TOKEN_SECRETS, ES256 against a P-256 key in AETHER_TOKEN_JWKS_FILE)
# beside no credentials at all. Each run is a fresh hub on 127.0.0.1 and the
# same aether-load connect (SOCKETS sockets, 100 in flight); the three modes
# alternate within each of ROUNDS rounds (the first mode rotating from
# round to round), so drift on a shared machine hits all three alike.
# aether-load signs every token before its clock starts: the rates are the
# hub's verification cost, not the client's signing cost.
#
#   benches/connect-tokens.sh [SOCKETS] [ROUNDS]     (defaults 10000, 3)
#
# Loopback only; every wait is bounded. Prints connects/s per round and
# mode, then the median ratios HS256/none and ES256/none; the raw JSON
# reports go to target/bench-results/connect-tokens/.
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-10000}
rounds=${2:-3}
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
load=target/release/aether-load
out=target/bench-results/connect-tokens
mkdir -p "$out"
rm -f "$out"/*.json

work=$(mktemp -d)
pid=
stop_hub() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
trap 'stop_hub; rm -rf "$work"' EXIT

# A throwaway P-256 key and its JWKS, and a throwaway HMAC secret (never printed).
$load keys --dir "$work" >/dev/null
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

run() { # mode round port
  local mode=$1 round=$2 port=$3
  local hub_env=() tool_args=()
  case $mode in
    none) ;;
    hs256) hub_env=(AETHER_TOKEN_SECRETS="$secret"); tool_args=(--token-secret "$secret") ;;
    es256) hub_env=(AETHER_TOKEN_JWKS_FILE="$work/jwks.json"); tool_args=(--token-key "$work/es256.pem") ;;
  esac
  env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error AETHER_SHUTDOWN_GRACE_SECS=1 \
    "${hub_env[@]}" target/release/aether-hub &
  pid=$!
  wait_port "$port" || { echo "hub on port $port did not start" >&2; exit 1; }
  timeout 300 "$load" connect --url "ws://127.0.0.1:$port" --sockets "$sockets" --parallel 100 \
    --hold 0.5 --settle 0.5 --timeout 240 --server-pid "$pid" "${tool_args[@]}" \
    2>/dev/null > "$out/$mode-$round.json" || echo "$mode round $round: aether-load failed" >&2
  stop_hub
}

modes=(none hs256 es256)
port=18400
for round in $(seq "$rounds"); do
  for k in 0 1 2; do
    mode=${modes[$(( (round - 1 + k) % 3 ))]}
    run "$mode" "$round" "$port"
    port=$((port + 1))
  done
done

python3 - "$out" "$rounds" "$sockets" <<'PY'
import json, statistics, sys
out, rounds, sockets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
modes = ["none", "hs256", "es256"]
rate = {m: {} for m in modes}
rss = {m: [] for m in modes}
problems = []
for r in range(1, rounds + 1):
    cells = []
    for m in modes:
        try:
            d = json.loads(open(f"{out}/{m}-{r}.json").read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            problems.append(f"{m} round {r}: no report")
            cells.append(f"{m} -")
            continue
        if d["established"] != sockets or d["failed"] != 0:
            problems.append(f"{m} round {r}: {d['established']} established, {d['failed']} failed")
        rate[m][r] = d["connects_per_sec"]
        if d.get("hub_rss_per_socket_bytes") is not None:
            rss[m].append(d["hub_rss_per_socket_bytes"] / 1024)
        cells.append(f"{m} {d['connects_per_sec']:.0f}/s")
    print(f"round {r}: " + ", ".join(cells))
for m in modes:
    if rate[m]:
        kib = f", {statistics.median(rss[m]):.2f} KiB RSS per idle socket" if rss[m] else ""
        print(f"median {m}: {statistics.median(rate[m].values()):.0f} connects/s{kib}")
def ratio(m):
    # Median of the per-round ratios: each round's modes ran back to back.
    per_round = [v / rate["none"][r] for r, v in rate[m].items() if rate["none"].get(r)]
    return statistics.median(per_round) if per_round else float("nan")
print(f"median ratio hs256/none: {ratio('hs256'):.3f}")
print(f"median ratio es256/none: {ratio('es256'):.3f}")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
