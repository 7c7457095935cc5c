#!/usr/bin/env bash
# The hub against NATS over WebSocket (issue 22), in one run: nats-server
# (Debian's, its WebSocket listener on) and the hub in memory, with history
# on (AETHER_HISTORY_SIZE=100, the default) and off (0), take turns on the
# same shapes, the order rotating each round, so all three see the same
# machine. Per run: deliveries/s (the load tool's: `aether-load fanout`
# for the hub, `aether-load nats-fanout` for NATS, the same messages, pacing
# and counting) and the SERVER's CPU time per delivery: utime+stime of the
# server process (/proc/PID/stat) over the whole run divided by the
# deliveries the server counted (the hub's aether_messages_delivered_total,
# NATS's /varz out_msgs). On this shared 2-core machine, where the load tool
# competes with the server for the cores, the CPU figure is the steadier.
#
#   benches/nats.sh [ROUNDS]       (ROUNDS: 3)
#
# NATS_HUB=FILE uses that hub binary instead of this tree's release build,
# NATS_LOAD=FILE that load tool (with both, nothing is built);
# NATS_SHAPES="1 1000;200 5" (groups, subscribers) are the shapes. Shapes:
# fan-out 1 x 1,000 and 200 groups x 5 subscribers, at full speed (each
# publisher at most --window 64 messages ahead of its tracked subscriber),
# 200-byte pads, 2 s warm-up + 10 s. Loopback only, ports 23401-23413;
# every wait is bounded. Writes target/bench-results/nats/results.csv and
# prints each shape's medians and the ratio to NATS.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
out=target/bench-results/nats
mkdir -p "$out"

# Debian's nats-server, installed as scripts/test installs its packages.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "benches/nats.sh: installing nats-server (Debian package)" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq nats-server >/dev/null
fi
nats=$(command -v nats-server || echo /usr/sbin/nats-server)

if [ -z "${NATS_HUB:-}" ] || [ -z "${NATS_LOAD:-}" ]; then
  cargo build --release --quiet --bin aether-hub --bin aether-load
fi
# Copies, so that a rebuild in this tree while the rounds run changes
# neither side.
cp "${NATS_HUB:-target/release/aether-hub}" "$out/aether-hub"
cp "${NATS_LOAD:-target/release/aether-load}" "$out/aether-load"
hub_bin=$out/aether-hub
load=$out/aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

hub_port=23401 ws_port=23411 nats_port=23412 http_port=23413
cat >"$out/nats.conf" <<EOF
# Written by benches/nats.sh: loopback only, the monitoring endpoint for
# out_msgs, WebSocket without TLS nor compression (the hub has neither).
host: 127.0.0.1
port: $nats_port
http: "127.0.0.1:$http_port"
websocket {
  host: 127.0.0.1
  port: $ws_port
  no_tls: true
  compression: false
}
EOF

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { # pid: "utime stime", in clock ticks
  awk '{ print $14, $15 }' "/proc/$1/stat"
}
delivered() { # side: the server's deliveries so far
  if [ "$1" = nats ]; then
    curl -s -m 5 "127.0.0.1:$http_port/varz" | awk -F'[:,]' '/"out_msgs"/ { gsub(/ /, "", $2); n = $2 } END { printf "%d\n", n }'
  else
    curl -s -m 5 "127.0.0.1:$hub_port/metrics" | awk '/^aether_messages_delivered_total / { n = $2 } END { printf "%d\n", n }'
  fi
}

# run SIDE ROUND GROUPS SUBSCRIBERS -> appends a CSV row (in this shell,
# not a subshell: the EXIT trap must see the server's pid)
run() {
  local side=$1 round=$2 groups=$3 subs=$4 scenario url
  case "$side" in
    nats)
      "$nats" -c "$out/nats.conf" >"$out/nats.log" 2>&1 & pids+=($!)
      wait_port "$ws_port" && wait_port "$http_port"
      scenario=nats-fanout url="ws://127.0.0.1:$ws_port"
      ;;
    hub | hub-nohistory)
      local history=100
      [ "$side" = hub-nohistory ] && history=0
      env AETHER_BIND="127.0.0.1:$hub_port" AETHER_LOG=error AETHER_HISTORY_SIZE=$history \
        "$hub_bin" & pids+=($!)
      wait_port "$hub_port"
      scenario=fanout url="ws://127.0.0.1:$hub_port"
      ;;
  esac
  local pid=${pids[0]} user0 sys0 user1 sys1 d0 d1
  read -r user0 sys0 < <(cpu_ticks "$pid")
  d0=$(delivered "$side")
  if ! timeout 120 "$load" "$scenario" --url "$url" --groups "$groups" --subscribers "$subs" \
    --duration 10 --warmup 2 >"$out/run.json" 2>"$out/run.err"; then
    cleanup
    echo "benches/nats.sh: $side $groups x $subs failed:" >&2
    tail -5 "$out/run.err" >&2
    exit 1
  fi
  read -r user1 sys1 < <(cpu_ticks "$pid")
  d1=$(delivered "$side")
  cleanup
  python3 - "$side" "$round" "$groups" "$subs" "$((user1 - user0))" "$((sys1 - sys0))" "$((d1 - d0))" "$(getconf CLK_TCK)" "$out/run.json" <<'PY' | tee -a "$out/results.csv"
import json, sys
side, rnd, groups, subs, user, system, delivered, hz, path = sys.argv[1:10]
d = json.loads(open(path).read().strip().splitlines()[-1])
user_s, sys_s = int(user) / int(hz), int(system) / int(hz)
cpu_s = user_s + sys_s
us = cpu_s * 1e6 / max(int(delivered), 1)
# The same CPU over the deliveries the load tool saw: the hub's counter
# also counts presence events (a join is sent to the whole group).
us_tool = cpu_s * 1e6 / max(int(d["delivered"]), 1)
lat = d["latency"]
print(f"{side},{groups}x{subs},{rnd},{d['deliveries_per_sec']:.0f},{us:.3f},{us_tool:.3f},"
      f"{user_s:.2f},{sys_s:.2f},{delivered},{d['delivered']},{d['loss']},{d['order_violations']},"
      f"{lat['p50_ms']:.2f},{lat['p99_ms']:.2f}")
PY
}

echo "server,shape,round,deliveries_per_sec,server_cpu_us_per_delivery,cpu_us_per_tool_delivery,server_user_s,server_sys_s,server_deliveries,tool_deliveries,loss,order_violations,p50_ms,p99_ms" >"$out/results.csv"
IFS=';' read -r -a shapes <<<"${NATS_SHAPES:-1 1000;200 5}"
sides=(nats hub hub-nohistory)
for round in $(seq "$rounds"); do
  for shape in "${shapes[@]}"; do
    read -r groups subs <<<"$shape"
    # Each side goes first, second and third in turn.
    shift_by=$(((round - 1) % ${#sides[@]}))
    order=("${sides[@]:shift_by}" "${sides[@]:0:shift_by}")
    for side in "${order[@]}"; do
      run "$side" "$round" "$groups" "$subs" >/dev/null
      IFS=, read -r _ _ _ rate us _ < <(tail -n 1 "$out/results.csv")
      echo "round $round/$rounds: $side $groups x $subs: $rate deliveries/s, $us us CPU/delivery" >&2
    done
  done
done

python3 - "$out/results.csv" "$("$nats" --version)" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{sys.argv[2]}; medians of {len({r['round'] for r in rows})} rounds")
print("server,shape,deliveries/s,ratio to nats,server us CPU/delivery,ratio to nats,us CPU per tool delivery,user share of CPU,loss,order violations")
shapes = sorted({r["shape"] for r in rows}, key=lambda s: int(s.split("x")[0]))
for shape in shapes:
    def med(side, key):
        return statistics.median(float(r[key]) for r in rows if r["shape"] == shape and r["server"] == side)
    base_rate, base_us = med("nats", "deliveries_per_sec"), med("nats", "server_cpu_us_per_delivery")
    for side in ("nats", "hub", "hub-nohistory"):
        mine = [r for r in rows if r["shape"] == shape and r["server"] == side]
        if not mine:
            continue
        rate, us = med(side, "deliveries_per_sec"), med(side, "server_cpu_us_per_delivery")
        loss = sum(int(r["loss"]) for r in mine)
        order = sum(int(r["order_violations"]) for r in mine)
        user = statistics.median(float(r["server_user_s"]) / max(float(r["server_user_s"]) + float(r["server_sys_s"]), 1e-9) for r in mine)
        print(f"{side},{shape},{rate:.0f},{rate / base_rate:.3f},{us:.3f},{us / base_us:.3f},"
              f"{med(side, 'cpu_us_per_tool_delivery'):.3f},{user:.2f},{loss},{order}")
PY
