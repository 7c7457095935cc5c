#!/usr/bin/env bash
# Soak (issue 13): two hubs (release build) over one redis-server with
# history on (AETHER_HISTORY_SIZE=100), all on 127.0.0.1, under a
# moderate mixed load for an hour, to show that memory, descriptors and
# tasks stay flat and that nothing the protocol promised is lost:
#  - `aether-load soak`: 5,000 sockets, 100 groups of 50 (25 on each hub):
#    in each group a controller sends 1 group message and 1 direct command
#    a second, each command to its next worker, who answers with a direct
#    message; workers reconnect (5 a second over all of them, away 0.2 to
#    3 s) and resume with since_group/since_client (PROTOCOL.md section 9);
#    every minute (half a minute in) one more socket stops reading while it
#    is flooded, and must be dropped with 4008;
#  - every --restart-every minutes (default 10) this script kills
#    redis-server (SIGKILL, no persistence: every key is lost) and starts
#    it again on the same port; the hubs reconnect on their own;
#  - every minute it samples each hub's VmRSS and Threads
#    (/proc/PID/status), open descriptors (/proc/PID/fd) and, from its
#    /metrics, tasks alive (aether_tokio_tasks_alive), sockets, 4008 closes,
#    Redis reconnects, gap repairs and drops; Redis's used_memory (INFO
#    memory); and joins them to the load tool's row of the same minute.
#
#   benches/soak.sh [--minutes N] [--restart-every M] [-- AETHER-LOAD-SOAK-OPTIONS...]
#
#   benches/soak.sh                    (one hour; about 62 minutes in all)
#   benches/soak.sh --minutes 3 --restart-every 1    (a short check)
#
# Output in target/bench-results/soak/: soak.csv (one row a minute, row 0
# once every socket is up and before any traffic), soak.png (gnuplot,
# installed as gnuplot-nox when missing), the hubs' and the load tool's
# logs (anomalies: each loss, order violation or failed recovery is named
# there), summary.json. Exits 1 when a check below fails.
#
# Loss for kept routes, what the CSV counts (loss_group, loss_client,
# loss_total). Every socket keeps, per route it is on (a worker: its group
# route and its client route; a controller: its client route, where the
# answers come), the epoch and the highest offset it has seen, from its
# first connect on (since_*=new gives the start). Lost:
#  1. within one epoch, every offset skipped: 7 after 4 loses 5 and 6,
#     whether they were due live, in a replay, or across a reconnect the hub
#     answered with recovered: true ("while a socket stays connected, it
#     receives every kept message of its routes, in order, even across the
#     instance's own Redis reconnects"; every kept message on these routes
#     is meant for the socket: workers never send to their group, and only
#     a worker's controller sends to it);
#  2. around a Redis restart: a socket that saw epoch E1 and then, still
#     connected, sees a message of a new epoch E2 was connected when E2
#     began, so all of E2 is owed: offsets 1 .. first-1 of E2 are lost.
# Not lost, because the protocol did not promise them:
#  - what E1 numbered after the socket's last E1 message: it died with
#    Redis's keys (section 9: a new epoch begins when the numbering is
#    lost); no history holds it;
#  - messages sent while Redis was down, or before the sender's hub saw it
#    go: never numbered, dropped at the sender's hub
#    (aether_messages_dropped_total{reason="broker_unavailable"}, the
#    *_broker_dropped columns);
#  - for a worker away during a restart, E2's messages before its return:
#    its recovery says recovered: false with E2 (recovery_new_epoch, the
#    protocol's answer) and it carries on from E2's position.
# Counted apart, each a failure: order_violations (an offset at or below
# the last one, or a message of an epoch that ended: a duplicate or a
# reorder), recovery_failed (recovered: false in the same epoch, a replay
# of another size than its `missed`, no summary within 10 s),
# unexpected_closes (a healthy socket closed or dropped: the hub keeps
# sockets open through a Redis outage). A slow consumer must end with a
# 4008 close frame (slow_4008 = slow_started).
#
# Loopback only; every wait is bounded; the load tool ends by itself after
# N minutes of traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=60
restart_every=10
load_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --restart-every) restart_every=$2; shift 2 ;;
    --) shift; load_args=("$@"); break ;;
    *) echo "usage: benches/soak.sh [--minutes N] [--restart-every M] [-- aether-load soak options]" >&2; exit 2 ;;
  esac
done
case "$minutes$restart_every" in
  *[!0-9]*) echo "benches/soak.sh: --minutes and --restart-every take whole minutes" >&2; exit 2 ;;
esac
if [ "$minutes" -eq 0 ] || [ "$restart_every" -eq 0 ]; then
  echo "benches/soak.sh: --minutes and --restart-every must be at least 1" >&2
  exit 2
fi

if ! command -v gnuplot >/dev/null 2>&1; then
  echo "benches/soak.sh: installing gnuplot-nox (Debian package)" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq gnuplot-nox >/dev/null
fi
cargo build --release --quiet --bin aether-hub --bin aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

out=target/bench-results/soak
mkdir -p "$out"
rm -f "$out"/soak.csv "$out"/soak.png "$out"/summary.json "$out"/*.log
csv=$out/soak.csv
redis_port=16620
hub_ports=(18721 18722)
hub_names=(a b)
work=$(mktemp -d)
hub_pids=()
redis_pid=
load_pid=
cleanup() {
  for p in ${load_pid:+"$load_pid"} "${hub_pids[@]}" ${redis_pid:+"$redis_pid"}; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done; return 1; }
for p in "$redis_port" "${hub_ports[@]}"; do
  if port_open "$p"; then echo "benches/soak.sh: port $p is in use" >&2; exit 1; fi
done

start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$work" >>"$out/redis.log" 2>&1 &
  redis_pid=$!
  wait_port "$redis_port"
}
restarts=0
restart_redis() {
  kill -9 "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  start_redis
  restarts=$((restarts + 1))
  echo "benches/soak.sh: redis-server restarted ($restarts)" >&2
}
start_hub() { # index
  local port=${hub_ports[$1]} name=${hub_names[$1]}
  env AETHER_BIND="127.0.0.1:$port" AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/" \
    AETHER_INSTANCE_ID="soak-$name" AETHER_HISTORY_SIZE=100 AETHER_LOG=warn \
    AETHER_SHUTDOWN_GRACE_SECS=1 target/release/aether-hub >"$out/hub-$name.log" 2>&1 &
  hub_pids+=($!)
  wait_port "$port"
}

hub_header() {
  local n
  for n in "${hub_names[@]}"; do
    printf ',%s_rss_kib,%s_fds,%s_threads,%s_tasks,%s_sockets,%s_closed_4008,%s_redis_reconnects,%s_gap_repairs,%s_broker_dropped,%s_slow_dropped' \
      "$n" "$n" "$n" "$n" "$n" "$n" "$n" "$n" "$n" "$n"
  done
}
# One sample of hub INDEX: /proc and /metrics, as CSV fields (empty when
# the process or a series is gone).
sample_hub() {
  local pid=${hub_pids[$1]} port=${hub_ports[$1]} rss='' threads='' metrics fds=()
  if [ -r "/proc/$pid/status" ]; then
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    fds=("/proc/$pid/fd/"*)
  fi
  metrics=$(curl -s --max-time 5 "http://127.0.0.1:$port/metrics" || true)
  # A series the hub has not rendered yet (no 4008 so far) is 0; all are
  # empty when /metrics did not answer.
  metric() {
    [ -n "$metrics" ] || return 0
    awk -v name="$1" '$1 == name { v = $2 } END { printf "%d", v }' <<<"$metrics"
  }
  printf ',%s,%s,%s,%s,%s,%s,%s,%s,%s,%s' "$rss" "${#fds[@]}" "$threads" \
    "$(metric aether_tokio_tasks_alive)" "$(metric aether_connections_open)" \
    "$(metric 'aether_connections_closed_total{code="4008"}')" \
    "$(metric aether_redis_reconnects_total)" "$(metric aether_gap_repairs_total)" \
    "$(metric 'aether_messages_dropped_total{reason="broker_unavailable"}')" \
    "$(metric 'aether_messages_dropped_total{reason="slow_consumer"}')"
}
# The latest row, in short, on stderr.
progress() {
  awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } { r = $0 }
    END { split(r, v, ","); printf "minute %s: loss %s, p99 %s ms, RSS %s / %s KiB, fds %s / %s, tasks %s / %s, Redis %s B\n",
      v[c["row"]], v[c["loss_total"]], v[c["p99_ms"]], v[c["a_rss_kib"]], v[c["b_rss_kib"]],
      v[c["a_fds"]], v[c["b_fds"]], v[c["a_tasks"]], v[c["b_tasks"]], v[c["redis_used_memory"]] }' "$csv" >&2
}
redis_memory() {
  redis-cli -p "$redis_port" INFO memory 2>/dev/null | tr -d '\r' | awk -F: '/^used_memory:/ { print $2 }' || true
}

start_redis
start_hub 0
start_hub 1
sleep 1
echo "benches/soak.sh: $minutes minutes of traffic, redis-server restarted every $restart_every; CSV in $csv" >&2

exec 3< <(exec target/release/aether-load soak --url "ws://127.0.0.1:${hub_ports[0]}" \
  --url "ws://127.0.0.1:${hub_ports[1]}" --minutes "$minutes" "${load_args[@]}" 2>"$out/load.log")
load_pid=$!
while IFS= read -r line <&3; do
  case $line in
    row,*)
      echo "$line,redis_restarts,redis_used_memory$(hub_header)" >"$csv" ;;
    [0-9]*)
      row=${line%%,*}
      echo "$line,$restarts,$(redis_memory)$(sample_hub 0)$(sample_hub 1)" >>"$csv"
      progress
      if [ "$row" -gt 0 ] && [ "$row" -lt "$minutes" ] && [ $((row % restart_every)) -eq 0 ]; then
        restart_redis
      fi ;;
    "{"*)
      echo "$line" >"$out/summary.json" ;;
    *)
      echo "$line" ;;
  esac
done
wait "$load_pid" || echo "benches/soak.sh: aether-load failed (see $out/load.log)" >&2
load_pid=

gnuplot <<GP || echo "benches/soak.sh: gnuplot failed" >&2
set terminal pngcairo noenhanced size 1200,900 font ",9"
set output "$out/soak.png"
set datafile separator ","
set datafile columnheaders
set key top left
set grid
set yrange [0:*]
set y2range [0:1<*]
set xlabel "minutes"
set multiplot layout 3,2 title "aether-hub soak: 2 hubs, 1 Redis restarted every $restart_every min"
set title "hub RSS (MiB)"
plot "$csv" using (\$2/60):(column("a_rss_kib")/1024) with lines title "hub a", \
     "" using (\$2/60):(column("b_rss_kib")/1024) with lines title "hub b"
set title "open fds, tokio tasks, threads"
plot "$csv" using (\$2/60):(column("a_fds")) with lines title "fds a", \
     "" using (\$2/60):(column("b_fds")) with lines title "fds b", \
     "" using (\$2/60):(column("a_tasks")) with lines title "tasks a", \
     "" using (\$2/60):(column("b_tasks")) with lines title "tasks b", \
     "" using (\$2/60):(column("a_threads")) with lines title "threads a", \
     "" using (\$2/60):(column("b_threads")) with lines title "threads b"
set title "Redis used_memory (MiB), restarts"
set y2tics
plot "$csv" using (\$2/60):(column("redis_used_memory")/1048576) with lines title "used_memory", \
     "" using (\$2/60):(column("redis_restarts")) with fsteps axes x1y2 title "restarts (right)"
set title "per minute: deliveries (kept messages received), reconnects"
plot "$csv" every ::1 using (\$2/60):(column("deliveries")) with lines title "deliveries", \
     "" every ::1 using (\$2/60):(column("reconnects")) with lines axes x1y2 title "reconnects (right)"
unset y2tics
set title "latency of live messages (ms)"
plot "$csv" every ::1 using (\$2/60):(column("p50_ms")) with lines title "p50", \
     "" every ::1 using (\$2/60):(column("p99_ms")) with lines title "p99"
set title "failures (all must stay 0)"
set yrange [-0.05:1<*]
set style data linespoints
plot "$csv" using (\$2/60):(column("loss_total")) pt 7 ps 0.5 title "loss (cumulative)", \
     "" using (\$2/60):(column("order_violations")) pt 7 ps 0.5 title "order violations", \
     "" using (\$2/60):(column("recovery_failed")) pt 7 ps 0.5 title "failed recoveries", \
     "" using (\$2/60):(column("unexpected_closes")) pt 7 ps 0.5 title "unexpected closes"
unset multiplot
GP

python3 - "$csv" "$out/summary.json" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
problems = []
if len(rows) < 2:
    print("PROBLEM: fewer than two rows in the CSV"); sys.exit(1)
def num(r, k):
    try:
        return float(r[k])
    except (KeyError, ValueError):
        return None
first, last = rows[1], rows[-1]   # row 1: traffic running; row 0 is at rest
total = lambda k: sum(num(r, k) or 0 for r in rows)
for h in ("a", "b"):
    for k in ("rss_kib", "fds", "threads", "tasks", "sockets"):
        vals = [num(r, f"{h}_{k}") for r in rows[1:]]
        if None in vals:
            problems.append(f"hub {h}: {k} missing in some rows (process gone?)"); continue
        print(f"hub {h} {k}: minute 1 {vals[0]:.0f}, last {vals[-1]:.0f}, min {min(vals):.0f}, max {max(vals):.0f}")
    # Tasks and descriptors follow sockets (churn moves sockets around):
    # what grows beside them is a leak.
    for k in ("tasks", "fds"):
        a = num(first, f"{h}_{k}") - num(first, f"{h}_sockets")
        b = num(last, f"{h}_{k}") - num(last, f"{h}_sockets")
        print(f"hub {h} {k} beyond sockets: minute 1 {a:.0f}, last {b:.0f}")
        if b - a > 100:
            problems.append(f"hub {h}: {k} beyond sockets grew from {a:.0f} to {b:.0f}")
mem = [num(r, "redis_used_memory") for r in rows[1:] if num(r, "redis_used_memory")]
if mem:
    print(f"Redis used_memory: minute 1 {mem[0]/2**20:.1f} MiB, last {mem[-1]/2**20:.1f} MiB, max {max(mem)/2**20:.1f} MiB")
p99 = [num(r, "p99_ms") for r in rows[1:]]
print(f"p99 per minute: median {sorted(p99)[len(p99)//2]:.2f} ms, max {max(p99):.2f} ms")
print(f"deliveries {total('deliveries'):.0f}, reconnects {total('reconnects'):.0f}, "
      f"recoveries whole {total('recovered'):.0f}, after a new epoch {total('recovery_new_epoch'):.0f}, "
      f"Redis restarts {num(last, 'redis_restarts'):.0f}, epoch changes seen live {total('epoch_changes'):.0f}")
for k in ("loss_group", "loss_client", "order_violations", "recovery_failed", "unexpected_closes"):
    if total(k):
        problems.append(f"{k}: {total(k):.0f} (see load.log)")
started, seen = total("slow_started"), total("slow_4008")
print(f"slow consumers: {started:.0f} started, {total('slow_dropped'):.0f} dropped, {seen:.0f} closed with 4008")
if seen < started:
    problems.append(f"slow consumers: {started - seen:.0f} of {started:.0f} not closed with 4008 (see load.log)")
try:
    summary = json.loads(open(sys.argv[2]).read())
    print(f"whole run: latency p50 {summary['latency']['p50_ms']:.2f} ms, p99 {summary['latency']['p99_ms']:.2f} ms, "
          f"max {summary['latency']['max_ms']:.1f} ms; loss {summary['loss']}")
except (OSError, ValueError, KeyError):
    problems.append("no summary from aether-load")
for p in problems:
    print("PROBLEM: " + p)
sys.exit(1 if problems else 0)
PY
