#!/usr/bin/env bash
# What holding revocations costs an upgrade (docs/protocol.md section 11),
# A/B in one run on fresh in-memory hubs on 127.0.0.1: connects/s with
# HS256 tokens (each with a `jti` and an `iat`) and the hub's CPU per
# connect, with no revocation held ("none") beside REVOCATIONS held
# ("held": half by `jti`, none of them the tool's; half by `sub`, naming
# the tool's own clients but issued before their tokens, so every upgrade
# looks both up and is still admitted). SOCKETS sockets, 100 in flight, one
# group per socket. The modes alternate within each of ROUNDS rounds (the
# first rotating), so drift on a shared machine hits both alike. The
# revocations are posted before the clock starts.
#
#   benches/revocations.sh [SOCKETS] [ROUNDS] [REVOCATIONS]   (defaults 10000, 3, 10000)
#
# Loopback only; every wait is bounded. Prints a line per round, then the
# median ratios; raw reports go to target/bench-results/revocations/.
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-10000}
rounds=${2:-3}
revocations=${3:-10000}
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
load=target/release/aether-load
out=target/bench-results/revocations
mkdir -p "$out"
rm -f "$out"/*

pid=
stop_hub() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
trap stop_hub EXIT

secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
admin=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Posts the revocations over one keep-alive connection; fails on any non-202.
revoke() { # port
  python3 - "$1" "$admin" "$revocations" <<'PY'
import http.client, json, sys, time
port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
now = int(time.time())
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for i in range(n):
    if i % 2 == 0:
        body = {"jti": f"revoked-{i}", "until": now + 3600}
    else:
        body = {"sub": f"load-c{i // 2}", "issued_before": now - 3600, "until": now + 3600}
    conn.request("POST", "/v3/revoke", json.dumps(body), {"X-Aether-API-Key": key})
    r = conn.getresponse(); r.read()
    if r.status != 202:
        sys.exit(f"revoke {i}: {r.status}")
PY
}

run() { # mode round port
  local mode=$1 round=$2 port=$3
  env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error AETHER_SHUTDOWN_GRACE_SECS=1 \
    AETHER_TOKEN_SECRETS="$secret" AETHER_ADMIN_API_KEYS="$admin" target/release/aether-hub &
  pid=$!
  wait_port "$port" || { echo "hub on port $port did not start" >&2; exit 1; }
  [ "$mode" = held ] && revoke "$port"
  local t0; t0=$(ticks "$pid")
  timeout 300 "$load" connect --url "ws://127.0.0.1:$port" --sockets "$sockets" --groups "$sockets" \
    --parallel 100 --hold 0.5 --settle 0.5 --timeout 240 --token-secret "$secret" \
    2>/dev/null > "$out/$mode-$round.json" || echo "$mode round $round: aether-load failed" >&2
  echo "$(( $(ticks "$pid") - t0 ))" > "$out/$mode-$round.ticks"
  stop_hub
}

port=18600
for round in $(seq "$rounds"); do
  modes=(none held)
  for k in 0 1; do
    mode=${modes[$(( (round - 1 + k) % 2 ))]}
    run "$mode" "$round" "$port"
    port=$((port + 1))
  done
done

python3 - "$out" "$rounds" "$sockets" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
out, rounds, sockets, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rate, cpu, problems = {"none": {}, "held": {}}, {"none": {}, "held": {}}, []
for r in range(1, rounds + 1):
    cells = []
    for m in ("none", "held"):
        try:
            d = json.loads(open(f"{out}/{m}-{r}.json").read().strip().splitlines()[-1])
            ticks = int(open(f"{out}/{m}-{r}.ticks").read())
        except (OSError, ValueError, IndexError):
            problems.append(f"{m} round {r}: no report")
            continue
        if d["established"] != sockets or d["failed"] != 0:
            problems.append(f"{m} round {r}: {d['established']} established, {d['failed']} failed")
        rate[m][r] = d["connects_per_sec"]
        cpu[m][r] = ticks / hz / sockets * 1e6
        cells.append(f"{m} {rate[m][r]:.0f} connects/s, hub {cpu[m][r]:.0f} us CPU per connect")
    print(f"round {r}: " + "; ".join(cells))
ratios = [rate["held"][r] / rate["none"][r] for r in rate["held"] if r in rate["none"]]
cpus = [cpu["held"][r] / cpu["none"][r] for r in cpu["held"] if r in cpu["none"]]
if ratios:
    print(f"median ratio held/none: connects/s {statistics.median(ratios):.3f}, "
          f"hub CPU per connect {statistics.median(cpus):.3f}")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
