#!/usr/bin/env bash
# What identity tokens cost, A/B in one run on fresh hubs on 127.0.0.1:
#  - connects/s with a token verified at every upgrade (HS256 against
#    AETHER_TOKEN_SECRETS, ES256 against a P-256 key in
#    AETHER_TOKEN_JWKS_FILE) beside no credentials: SOCKETS sockets, 100 in
#    flight, one group per socket (no join announcements, so the upgrade
#    itself is what is measured);
#  - fan-out (1 group x 1,000 subscribers, max rate, 10 s) and rtt (100
#    pairs, 10 s) with HS256 tokens beside none: the per-frame capability
#    check is the only difference on the hot path.
# The modes alternate within each of ROUNDS rounds (the first mode rotating
# from round to round), so drift on a shared machine hits all alike.
# aether-load signs every token before its clock starts: the rates are the
# hub's verification cost, not the client's signing cost.
#
#   benches/tokens.sh [SOCKETS] [ROUNDS]     (defaults 10000, 3)
#
# Loopback only; every wait is bounded. Prints a line per round and
# scenario, then the median ratios; the raw JSON reports go to
# target/bench-results/tokens/.
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-10000}
rounds=${2:-3}
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
load=target/release/aether-load
out=target/bench-results/tokens
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

run() { # scenario mode round port [aether-load args...]
  local scenario=$1 mode=$2 round=$3 port=$4; shift 4
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
  [ "$scenario" = connect ] && tool_args+=(--server-pid "$pid")
  timeout 300 "$load" "$scenario" --url "ws://127.0.0.1:$port" "$@" "${tool_args[@]}" \
    2>/dev/null > "$out/$scenario-$mode-$round.json" || echo "$scenario $mode round $round: aether-load failed" >&2
  stop_hub
}

port=18400
for round in $(seq "$rounds"); do
  modes=(none hs256 es256)
  for k in 0 1 2; do
    mode=${modes[$(( (round - 1 + k) % 3 ))]}
    run connect "$mode" "$round" "$port" --sockets "$sockets" --groups "$sockets" --parallel 100 \
      --hold 0.5 --settle 0.5 --timeout 240
    port=$((port + 1))
  done
  modes=(none hs256)
  for k in 0 1; do
    mode=${modes[$(( (round - 1 + k) % 2 ))]}
    run fanout "$mode" "$round" "$port" --groups 1 --subscribers 1000 --duration 10 --warmup 2
    port=$((port + 1))
    run rtt "$mode" "$round" "$port" --pairs 100 --duration 10 --warmup 2
    port=$((port + 1))
  done
done

python3 - "$out" "$rounds" "$sockets" <<'PY'
import json, statistics, sys
out, rounds, sockets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# scenario: (modes, figure, unit, completeness check)
scenarios = {
    "connect": (["none", "hs256", "es256"], lambda d: d["connects_per_sec"], "connects/s",
                lambda d: d["established"] == sockets and d["failed"] == 0),
    "fanout": (["none", "hs256"], lambda d: d["deliveries_per_sec"], "deliveries/s",
               lambda d: d["loss"] == 0 and d["order_violations"] == 0),
    "rtt": (["none", "hs256"], lambda d: d["round_trips_per_sec"], "round trips/s",
            lambda d: d["round_trips"] > 0),
}
problems = []
for name, (modes, figure, unit, complete) in scenarios.items():
    value = {m: {} for m in modes}
    p99 = {m: [] for m in modes}
    for r in range(1, rounds + 1):
        cells = []
        for m in modes:
            try:
                d = json.loads(open(f"{out}/{name}-{m}-{r}.json").read().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                problems.append(f"{name} {m} round {r}: no report")
                continue
            if not complete(d):
                problems.append(f"{name} {m} round {r}: incomplete run")
            value[m][r] = figure(d)
            lat = d.get("latency") or d.get("rtt") or {}
            if "p99_ms" in lat:
                p99[m].append(lat["p99_ms"])
            cells.append(f"{m} {figure(d):.0f}" + (f" (p99 {lat['p99_ms']:.2f} ms)" if "p99_ms" in lat else ""))
        print(f"{name} round {r}: " + ", ".join(cells) + f" {unit}")
    for m in modes[1:]:
        # Median of the per-round ratios: each round's modes ran back to back.
        per_round = [v / value["none"][r] for r, v in value[m].items() if value["none"].get(r)]
        ratio = statistics.median(per_round) if per_round else float("nan")
        lat = ""
        if p99[m] and p99["none"]:
            lat = f"; median p99 {statistics.median(p99[m]):.2f} ms vs {statistics.median(p99['none']):.2f} ms"
        print(f"{name}: median ratio {m}/none {ratio:.3f}{lat}")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
