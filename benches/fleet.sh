#!/usr/bin/env bash
# Fleet scale (issue 22): SOCKETS WebSocket sockets over INSTANCES hubs
# (release build) on one redis-server, all on this machine over loopback,
# driven by several `aether-load fleet` processes, then a reconnect storm:
#  - a process may hold 20,000 descriptors here, so the sockets are split
#    over ceil(SOCKETS / FLEET_PER_PROCESS) load processes (16,000 each at
#    most), each from its own four loopback source addresses (process k:
#    127.0.0.(B+4k) .. 127.0.0.(B+3+4k), B = FLEET_SOURCE_BASE, 100: clear
#    of the addresses other load runs use by default) so that ephemeral
#    ports do not run out, each spreading its sockets over every hub;
#  - the sockets are in groups of FLEET_GROUP_SIZE (5): the first member of
#    each group sends FLEET_GROUP_RATE group messages a second (0.1),
#    asking for acknowledgements; the others receive them and measure
#    their latency (send time on the wall clock, in the message). 0.1 keeps
#    100,000 sockets (2,000 messages, 8,000 deliveries a second) within
#    the two cores with room for the storm: at 20,000 sockets and 0.2 (800
#    messages a second) the hubs, Redis and the load tool together took
#    about 0.42 of a core, about half a core per 1,000 messages a second;
#  - once every socket is up, the traffic starts in every process at once
#    (a go file); broadcast probes at FLEET_PROBES seconds after go (10,20,30):
#    one message to everyone, whose arrival every socket records;
#  - FLEET_STEADY_SECS (40) after go, hub 0 (about 1/INSTANCES of the
#    sockets) is killed with SIGKILL under traffic; its sockets return to
#    the other hubs at random with their since_* positions after a
#    full-jitter backoff, and must come back with recovered: true and
#    exactly what they missed; the run goes on FLEET_STORM_SECS (60) more;
#  - when the hub has the accept-rate limit (AETHER_MAX_CONNECTS_PER_SEC
#    in src/config.rs), a second round does it all again with
#    FLEET_LIMIT (2000) upgrades a second per hub, refused ones getting
#    503 + Retry-After; the load tool treats a 503 as one more failure
#    and backs off with full jitter, as a browser (which cannot see the
#    status) would (FLEET_LOAD_ARGS=--retry-after: wait what the hub said).
# Sampled every second (samples-ROUND.csv, joined to the load processes'
# rows into fleet.csv): each hub's VmRSS, CPU ticks and open sockets
# (/metrics aether_connections_open), Redis's CPU ticks, used_memory and
# pubsub_channels (INFO), the load processes' CPU ticks and RSS.
#
#   benches/fleet.sh [SOCKETS] [INSTANCES]     (defaults 100000 6)
#
#   benches/fleet.sh 100000 7                  (the full run: see docs/benchmarks/fleet.md)
#   FLEET_GROUP_RATE=0.2 benches/fleet.sh 20000 3   (the validation run, 4 min)
#
# Other settings, in the environment: FLEET_GROUP_SIZE, FLEET_GROUP_RATE,
# FLEET_PROBES (comma list of seconds after go), FLEET_STEADY_SECS,
# FLEET_STORM_SECS, FLEET_LIMIT (0: no second round), FLEET_PER_PROCESS,
# FLEET_HUB_ENV (extra hub settings, "NAME=value NAME=value"),
# FLEET_REDIS_PORT (16600), FLEET_PORT_BASE (22100: hubs on 22100..),
# FLEET_SOURCE_BASE (100), FLEET_LOAD_ARGS (extra `aether-load fleet`
# options, e.g. --retry-after or --backoff-base-ms 500),
# FLEET_ALLOW_OVERFLOW=1 (run even when the surviving hubs cannot hold
# every socket after the kill), FLEET_NO_BUILD=1 (run the binaries already
# in target/release), FLEET_REPORT_ONLY=1 (no run: the summary and plots
# again from the rounds in the output directory).
#
# Output in target/bench-results/fleet/: fleet.csv (one row a second per
# round, `round` and `t` = seconds since go), fleet.png (gnuplot, round 1;
# fleet-limited.png for round 2), summary.txt and summary.json (the
# figures of each round, merged over the load processes: broadcast
# arrival and latency percentiles from the processes' histogram lines,
# not averages of theirs), and per round the hubs', Redis's and the load
# processes' logs and raw files. Exits 1 when a correctness check fails:
# a socket never up or not back by the end, a gap, a duplicate, a replay
# other than announced, a tail loss, or recovered: false.
#
# Loopback only; every wait is bounded; the load processes end by
# themselves FLEET_STEADY_SECS + FLEET_STORM_SECS after go.
set -euo pipefail
cd "$(dirname "$0")/.."
sockets=${1:-100000}
instances=${2:-6}
group_size=${FLEET_GROUP_SIZE:-5}
group_rate=${FLEET_GROUP_RATE:-0.1}
probes=${FLEET_PROBES:-10,20,30}
steady=${FLEET_STEADY_SECS:-40}
storm=${FLEET_STORM_SECS:-60}
limit=${FLEET_LIMIT:-2000}
per_process=${FLEET_PER_PROCESS:-16000}
redis_port=${FLEET_REDIS_PORT:-16600}
port_base=${FLEET_PORT_BASE:-22100}
source_base=${FLEET_SOURCE_BASE:-100}
read -r -a hub_env <<<"${FLEET_HUB_ENV:-}"
read -r -a load_args <<<"${FLEET_LOAD_ARGS:-}"

die() { echo "benches/fleet.sh: $*" >&2; exit 2; }
case "$sockets$instances$group_size$steady$storm$limit$per_process$redis_port$port_base$source_base" in
  *[!0-9]*) die "SOCKETS, INSTANCES and the FLEET_* counts take whole numbers" ;;
esac
[ "$instances" -ge 2 ] || die "INSTANCES must be at least 2 (one is killed)"
[ "$sockets" -ge "$instances" ] || die "SOCKETS must be at least INSTANCES"
[ "$per_process" -le 17000 ] || die "FLEET_PER_PROCESS above 17000 does not fit 20,000 descriptors"
# After the kill the survivors hold every socket; a hub admits the
# open-file limit less 256 (src/fdlimit.rs), and the hard limit here is
# 20,000 a process.
fd_hard=$(ulimit -Hn)
[ "$fd_hard" = unlimited ] && fd_hard=1048576
per_survivor=$(( (sockets + instances - 2) / (instances - 1) ))
if [ "$per_survivor" -gt $((fd_hard - 256)) ] && [ "${FLEET_ALLOW_OVERFLOW:-0}" != 1 ]; then
  die "after the kill each of the $((instances - 1)) surviving hubs would hold $per_survivor sockets, more than the $((fd_hard - 256)) a hub admits with $fd_hard descriptors: use more instances (100000 sockets: 7) or FLEET_ALLOW_OVERFLOW=1"
fi
procs=$(( (sockets + per_process - 1) / per_process ))
if [ "$source_base" -lt 1 ] || [ $((source_base + 4 * procs - 1)) -gt 255 ]; then
  die "too many load processes for 127.0.0.x source addresses from 127.0.0.$source_base"
fi

if ! command -v gnuplot >/dev/null 2>&1; then
  echo "benches/fleet.sh: installing gnuplot-nox (Debian package)" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq gnuplot-nox >/dev/null
fi
report_only=${FLEET_REPORT_ONLY:-0}
if [ "${FLEET_NO_BUILD:-0}" != 1 ] && [ "$report_only" != 1 ]; then
  cargo build --release --quiet --bin aether-hub --bin aether-load
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

out=target/bench-results/fleet
mkdir -p "$out"
if [ "$report_only" != 1 ]; then
  rm -rf "${out:?}"/round-* "$out"/fleet*.csv "$out"/fleet*.png "$out"/summary.*
fi
work=$(mktemp -d)
# The binaries as built now: a build in the same tree during the run
# (cargo replaces target/release/*) must not change what round 2 runs.
cp target/release/aether-hub target/release/aether-load "$work/"
hub_pids=()
load_pids=()
redis_pid=
sampler_pid=
stop_all() {
  local p
  for p in ${sampler_pid:+"$sampler_pid"} "${load_pids[@]}" "${hub_pids[@]}" ${redis_pid:+"$redis_pid"}; do
    kill "$p" 2>/dev/null || true
  done
  for p in ${sampler_pid:+"$sampler_pid"} "${load_pids[@]}" "${hub_pids[@]}" ${redis_pid:+"$redis_pid"}; do
    wait "$p" 2>/dev/null || true
  done
  sampler_pid='' redis_pid=''
  load_pids=()
  hub_pids=()
}
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done; return 1; }
hub_ports=()
for ((i = 0; i < instances; i++)); do hub_ports+=($((port_base + i))); done
for p in "$redis_port" "${hub_ports[@]}"; do
  if port_open "$p"; then echo "benches/fleet.sh: port $p is in use" >&2; exit 1; fi
done
urls=()
for p in "${hub_ports[@]}"; do urls+=(--url "ws://127.0.0.1:$p"); done
has_limit=no
grep -q MAX_CONNECTS_PER_SEC src/config.rs && has_limit=yes
duration=$((steady + storm))

# The sampler: one row a second on whole wall seconds, until its stop
# file appears (or an hour, whatever happens).
sampler=$(cat <<'PY'
import json, os, socket, sys, time, urllib.request
out, stop, redis_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
hubs = json.loads(sys.argv[4])            # [[pid, port], ...]
loads = json.loads(sys.argv[5])           # [pid, ...]
redis_pid = int(sys.argv[6])
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            rss = next((l.split()[1] for l in f if l.startswith("VmRSS:")), "")
        return int(rest[11]) + int(rest[12]), rss
    except (OSError, IndexError, ValueError, StopIteration):
        return "", ""
def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return str(int(float(line.split()[1])))
    except (OSError, ValueError):
        pass
    return ""
def info():
    try:
        with socket.create_connection(("127.0.0.1", redis_port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nINFO\r\n")
            data = b""
            while b"\r\n" not in data:
                data += s.recv(65536)
            head, body = data.split(b"\r\n", 1)
            size = int(head[1:])
            while len(body) < size:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        fields = dict(l.split(":", 1) for l in body.decode().splitlines() if ":" in l)
        return fields.get("used_memory", ""), fields.get("pubsub_channels", "")
    except (OSError, ValueError):
        return "", ""
head = ["unix_s", "time_s"]
for i in range(len(hubs)):
    head += [f"hub{i}_cpu_ticks", f"hub{i}_rss_kib", f"hub{i}_sockets"]
head += ["redis_cpu_ticks", "redis_rss_kib", "redis_used_memory", "redis_pubsub_channels",
         "load_cpu_ticks", "load_rss_kib"]
load_ticks = {}
with open(out, "w") as f:
    f.write(",".join(head) + "\n")
    deadline = time.time() + 3600
    due = int(time.time()) + 1
    while not os.path.exists(stop) and time.time() < deadline:
        time.sleep(max(0.0, due + 0.05 - time.time()))
        # Stamped with the second it was due at (the load rows' stamp),
        # with its real time beside it for the CPU rates.
        row = [str(due), f"{time.time():.3f}"]
        for pid, port in hubs:
            ticks, rss = stat(pid)
            row += [str(ticks), rss, metric(port, "aether_connections_open")]
        ticks, rss = stat(redis_pid)
        row += [str(ticks), rss, *info()]
        lr = 0
        for pid in loads:
            t, r = stat(pid)
            # A process that ended keeps its last count: the sum must not
            # drop when one exits.
            if t != "":
                load_ticks[pid] = t
            lr += int(r or 0)
        row += [str(sum(load_ticks.values())), str(lr)]
        f.write(",".join(row) + "\n")
        f.flush()
        due = max(due + 1, int(time.time()))
PY
)

# Sums over the load processes' latest rows: "up deliveries p99max phases".
load_state() { # dir
  local f
  for f in "$1"/load-*.csv; do
    if [ -s "$f" ]; then tail -n 1 "$f"; fi
  done | awk -F, '$1 ~ /^[0-9]+$/ { up += $5; d += $6; if ($27 > p) p = $27; ph[$3]++; n++ }
    END { phases = ""; for (k in ph) phases = phases k "=" ph[k] " "; printf "%d %d %.1f %d %s\n", up, d, p, n, phases }'
}

# One round: fresh Redis and hubs, the load processes, go, the kill, the
# storm, the end. $1: round name, $2: accept-rate limit (0: none).
run_round() {
  local round=$1 rate_limit=$2 dir=$out/round-$1 i k
  mkdir -p "$dir"
  echo "benches/fleet.sh: round $round: $sockets sockets, $instances hubs, $procs load processes, groups of $group_size at $group_rate msg/s, accept-rate limit ${rate_limit:-0}" >&2
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$work" >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  wait_port "$redis_port" || { echo "benches/fleet.sh: redis-server did not start" >&2; return 1; }
  local limit_env=()
  [ "$rate_limit" -gt 0 ] && limit_env=(AETHER_MAX_CONNECTS_PER_SEC="$rate_limit")
  for ((i = 0; i < instances; i++)); do
    env AETHER_BIND="127.0.0.1:${hub_ports[$i]}" AETHER_REDIS_URL="redis://127.0.0.1:$redis_port/" \
      AETHER_INSTANCE_ID="fleet-$i" AETHER_LOG=error AETHER_SHUTDOWN_GRACE_SECS=1 \
      "${limit_env[@]}" "${hub_env[@]}" "$work/aether-hub" >"$dir/hub-$i.log" 2>&1 &
    hub_pids+=($!)
  done
  for ((i = 0; i < instances; i++)); do
    wait_port "${hub_ports[$i]}" || { echo "benches/fleet.sh: hub $i did not start (see $dir/hub-$i.log)" >&2; return 1; }
  done
  # Before any socket: the hubs' and Redis's memory empty.
  sleep 1
  local rss0=()
  for ((i = 0; i < instances; i++)); do
    rss0+=("$(awk '/^VmRSS:/ { print $2 }' "/proc/${hub_pids[$i]}/status")")
  done
  local mem0
  mem0=$(redis-cli -p "$redis_port" INFO memory | tr -d '\r' | awk -F: '/^used_memory:/ { print $2 }')
  local go=$work/go-$round
  rm -f "$go" "$work/stop-$round"
  local per=$(( ( (sockets + procs - 1) / procs + group_size - 1) / group_size * group_size ))
  local left=$sockets n
  for ((k = 0; k < procs; k++)); do
    n=$(( left < per ? left : per ))
    left=$((left - n))
    [ "$n" -gt 0 ] || break
    local probe_args=()
    [ "$k" -eq 0 ] && [ -n "$probes" ] && probe_args=(--probe-at "$probes")
    "$work/aether-load" fleet "${urls[@]}" --id "$k" --sockets "$n" \
      --source-base $((source_base + 4 * k)) --sources 4 --group-size "$group_size" \
      --group-rate "$group_rate" --duration "$duration" --go-file "$go" \
      --setup-timeout 600 "${probe_args[@]}" "${load_args[@]}" --csv "$dir/load-$k.csv" --hist "$dir/load-$k.hist" \
      >"$dir/load-$k.out" 2>"$dir/load-$k.log" &
    load_pids+=($!)
  done
  local hubs_json loads_json
  hubs_json=$(for ((i = 0; i < instances; i++)); do printf '[%s,%s]\n' "${hub_pids[$i]}" "${hub_ports[$i]}"; done | paste -sd, -)
  loads_json=$(printf '%s\n' "${load_pids[@]}" | paste -sd, -)
  python3 -c "$sampler" "$dir/samples.csv" "$work/stop-$round" "$redis_port" "[$hubs_json]" \
    "[$loads_json]" "$redis_pid" &
  sampler_pid=$!

  # Setup: until every process is ready (bounded).
  local state up deliveries p99 ready_n started=$SECONDS
  while :; do
    sleep 2
    state=$(load_state "$dir")
    read -r up deliveries p99 _ <<<"$state"
    ready_n=$(grep -o 'ready=[0-9]*' <<<"$state" | cut -d= -f2 || true)
    echo "benches/fleet.sh: [$round setup $((SECONDS - started)) s] sockets up $up of $sockets" >&2
    [ "${ready_n:-0}" -eq "${#load_pids[@]}" ] && break
    if [ $((SECONDS - started)) -gt 660 ]; then
      echo "benches/fleet.sh: setup did not end within 660 s" >&2; return 1
    fi
    for p in "${load_pids[@]}"; do
      kill -0 "$p" 2>/dev/null || { echo "benches/fleet.sh: a load process ended early (see $dir/load-*.log)" >&2; return 1; }
    done
  done
  local setup_s=$((SECONDS - started))
  sleep 2   # every process settles into waiting
  touch "$go"
  local go_ms kill_ms=0 back_ms=0 t
  go_ms=$(date +%s%3N)
  echo "benches/fleet.sh: [$round] go: traffic for $duration s, hub 0 killed at $steady s" >&2
  # Traffic, the kill, the storm: a progress line every 5 s.
  while :; do
    sleep 1
    t=$(( ($(date +%s%3N) - go_ms) / 1000 ))
    if [ "$kill_ms" -eq 0 ] && [ "$t" -ge "$steady" ]; then
      kill -9 "${hub_pids[0]}"
      kill_ms=$(date +%s%3N)
      wait "${hub_pids[0]}" 2>/dev/null || true
      echo "benches/fleet.sh: [$round t=$t s] hub 0 killed (SIGKILL)" >&2
    fi
    state=$(load_state "$dir")
    read -r up deliveries p99 _ <<<"$state"
    if [ "$kill_ms" -gt 0 ] && [ "$back_ms" -eq 0 ] && [ "$up" -ge "$sockets" ] \
      && [ $(( $(date +%s%3N) - kill_ms )) -gt 2000 ]; then
      back_ms=$(date +%s%3N)
      echo "benches/fleet.sh: [$round t=$t s] all $sockets sockets back ($(( (back_ms - kill_ms) / 1000 )) s after the kill, by this 1 s poll)" >&2
    fi
    if [ $((t % 5)) -eq 0 ]; then
      echo "benches/fleet.sh: [$round t=$t s] sockets up $up of $sockets, $deliveries deliveries/s, p99 ${p99} ms (worst process)" >&2
    fi
    [ "$t" -ge $((duration + 30)) ] && break
    local alive=0
    for p in "${load_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
  done
  for p in "${load_pids[@]}"; do
    wait "$p" || echo "benches/fleet.sh: a load process failed (see $dir/load-*.log)" >&2
  done
  load_pids=()
  touch "$work/stop-$round"
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=
  local launched=0
  for f in "$dir"/load-*.out; do
    tail -n 1 "$f" >"${f%.out}.json"
    launched=$((launched + 1))
  done
  printf '{"round":"%s","sockets":%s,"instances":%s,"procs":%s,"group_size":%s,"group_rate":%s,"limit":%s,"go_ms":%s,"kill_ms":%s,"killed":0,"probes":"%s","setup_s":%s,"steady":%s,"duration":%s,"hub_rss0":[%s],"redis_mem0":%s}\n' \
    "$round" "$sockets" "$instances" "$launched" "$group_size" "$group_rate" "$rate_limit" "$go_ms" "$kill_ms" "$probes" "$setup_s" "$steady" "$duration" "$(IFS=,; echo "${rss0[*]}")" "${mem0:-0}" >"$dir/meta.json"
  stop_all
}

rounds=()
if [ "$report_only" = 1 ]; then
  # The summary and plots again, from the rounds already in $out.
  for d in "$out"/round-unlimited "$out"/round-limited; do
    [ -s "$d/meta.json" ] && rounds+=("${d##*/round-}")
  done
  [ "${#rounds[@]}" -gt 0 ] || die "FLEET_REPORT_ONLY: no round in $out"
else
  rounds+=(unlimited)
  run_round unlimited 0
  if [ "$has_limit" = yes ] && [ "$limit" -gt 0 ]; then
    rounds+=(limited)
    run_round limited "$limit"
  elif [ "$has_limit" = no ]; then
    echo "benches/fleet.sh: no AETHER_MAX_CONNECTS_PER_SEC in src/config.rs: one round only (FLEET_HUB_ENV passes settings to the hubs)" >&2
  fi
fi

status=0
python3 - "$out" "${rounds[@]}" <<'PY' || status=1
import csv, glob, json, math, os, sys
out, rounds = sys.argv[1], sys.argv[2:]
TCK = os.sysconf("SC_CLK_TCK")

def merge(lines):
    """(value_us, count) pairs -> sorted list."""
    acc = {}
    for v, c in lines:
        acc[v] = acc.get(v, 0) + c
    return sorted(acc.items())

def pct(pairs, q):
    total = sum(c for _, c in pairs)
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for v, c in pairs:
        seen += c
        if seen >= rank:
            return v / 1000.0
    return pairs[-1][0] / 1000.0

def fmt(x, unit=" ms", digits=1):
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

all_rows, summary, problems, text = [], {}, [], []
for rnd in rounds:
    d = f"{out}/round-{rnd}"
    meta = json.load(open(f"{d}/meta.json"))
    go_s, kill_s = meta["go_ms"] / 1000, meta["kill_ms"] / 1000
    H = meta["instances"]
    reports = []
    for f in sorted(glob.glob(f"{d}/load-*.json")):
        try:
            reports.append(json.load(open(f)))
        except ValueError:
            problems.append(f"{rnd}: no JSON summary in {f} (see its .log)")
    hist = {}          # kind -> unix_s -> [(v, c)]
    for f in glob.glob(f"{d}/load-*.hist"):
        for line in open(f):
            s, kind, v, c = line.rstrip("\n").split(",")
            hist.setdefault(kind, {}).setdefault(int(s), []).append((int(v), int(c)))
    loads = {}         # unix_s -> summed row
    sum_cols = ["up", "deliveries", "replayed", "sent", "acked", "drops", "reconnects",
                "recovered_true", "recovered_false", "replay_mismatch", "gaps", "duplicates",
                "connect_failures", "refused_503", "refused_other", "summary_timeouts",
                "probe_arrivals", "probe_replayed", "tail_loss"]
    for f in glob.glob(f"{d}/load-*.csv"):
        for r in csv.DictReader(open(f)):
            s = int(r["unix_s"])
            row = loads.setdefault(s, {k: 0 for k in sum_cols} | {"procs": 0})
            row["procs"] += 1
            for k in sum_cols:
                row[k] += int(float(r[k] or 0))
    samples = {int(r["unix_s"]): r for r in csv.DictReader(open(f"{d}/samples.csv"))}
    seconds = sorted(set(loads) | set(samples))
    prev, prev_time = None, None
    rows = []
    for s in seconds:
        smp, ld = samples.get(s, {}), loads.get(s, {})
        row = {"round": rnd, "unix_s": s, "t": s - round(go_s)}
        def cpu(key):
            if prev is None or not smp.get(key) or not prev.get(key):
                return ""
            span = float(smp["time_s"]) - prev_time
            if span <= 0:
                return ""
            return f"{100.0 * (float(smp[key]) - float(prev[key])) / TCK / span:.1f}"
        hubs_cpu = 0.0
        for i in range(H):
            c = cpu(f"hub{i}_cpu_ticks")
            row[f"hub{i}_cpu_pct"] = c
            hubs_cpu += float(c or 0)
            row[f"hub{i}_rss_kib"] = smp.get(f"hub{i}_rss_kib", "")
            row[f"hub{i}_sockets"] = smp.get(f"hub{i}_sockets", "")
        row["hubs_cpu_pct"] = f"{hubs_cpu:.1f}" if prev is not None else ""
        row["redis_cpu_pct"] = cpu("redis_cpu_ticks")
        row["redis_used_memory"] = smp.get("redis_used_memory", "")
        row["redis_pubsub_channels"] = smp.get("redis_pubsub_channels", "")
        row["load_cpu_pct"] = cpu("load_cpu_ticks")
        row["load_rss_kib"] = smp.get("load_rss_kib", "")
        for k in sum_cols:
            row[k] = ld.get(k, "")
        a, o = merge(hist.get("all", {}).get(s, [])), merge(hist.get("others", {}).get(s, []))
        row["p50_ms"] = f"{pct(a, 0.5):.3f}" if a else ""
        row["p99_ms"] = f"{pct(a, 0.99):.3f}" if a else ""
        row["others_p99_ms"] = f"{pct(o, 0.99):.3f}" if o else ""
        rows.append(row)
        if smp:
            prev, prev_time = smp, float(smp["time_s"])
    with open(f"{out}/fleet-{rnd}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    all_rows += rows

    # Windows: steady = [go + 5, kill) without the probes' seconds; storm =
    # [kill, all back].
    probe_s = [round(go_s + float(p)) for p in meta["probes"].split(",") if p]
    def near_probe(s):
        return any(p <= s <= p + 2 for p in probe_s)
    # Ends two seconds before the kill: a sample due then but taken late
    # must not see the storm.
    steady = [s for s in seconds if go_s + 5 <= s < kill_s - 2 and not near_probe(s)]
    sockets = meta["sockets"]
    last_back = max((r.get("last_back_unix_ms") or 0) for r in reports) if reports else 0
    up_at_end = sum(r.get("up_at_end", 0) for r in reports)
    totals = {k: sum(r["totals"].get(k, 0) for r in reports) for k in reports[0]["totals"]} if reports else {}
    all_back = up_at_end >= sockets and last_back > 0
    back_s = (last_back / 1000 - kill_s) if last_back else None
    storm_end = math.ceil(last_back / 1000) if all_back else max(seconds)
    storm = [s for s in seconds if kill_s <= s <= storm_end + 1]
    def cpu_mean(key, window):
        vals = [num(r[key]) for r in rows if r["unix_s"] in window and num(r[key]) is not None]
        return (sum(vals) / len(vals), max(vals)) if vals else (None, None)
    def at_last(key, window):
        vals = [r[key] for r in rows if r["unix_s"] in window and r.get(key) not in ("", None)]
        return num(vals[-1]) if vals else None
    res = {"round": rnd, "limit": meta["limit"], "sockets": sockets, "instances": H,
           "load_processes": meta["procs"], "group_size": meta["group_size"],
           "group_rate": meta["group_rate"], "setup_seconds": max((r["setup_seconds"] for r in reports), default=None),
           "never_up": sum(r.get("never_up", 0) for r in reports)}
    # RSS per socket per instance, just before the kill.
    per_hub = []
    sset = set(steady)
    for i in range(H):
        rss0 = num(meta["hub_rss0"][i]) if i < len(meta["hub_rss0"]) else None
        rss, n = at_last(f"hub{i}_rss_kib", sset), at_last(f"hub{i}_sockets", sset)
        per = ((rss - rss0) * 1024 / n) if rss and rss0 and n else None
        per_hub.append({"hub": i, "sockets": n, "rss_kib": rss, "rss_kib_empty": rss0,
                        "bytes_per_socket": per})
    res["hubs"] = per_hub
    res["redis_used_memory"] = at_last("redis_used_memory", sset)
    # With every socket up before any traffic; and the most it reached
    # (history is kept in stream nodes that Redis allocates whole, so
    # used_memory grows in steps, not per message).
    before_go = {s for s in seconds if s < go_s}
    res["redis_used_memory_at_go"] = at_last("redis_used_memory", before_go)
    mem = [num(r["redis_used_memory"]) for r in rows if num(r["redis_used_memory"])]
    res["redis_used_memory_max"] = max(mem) if mem else None
    res["redis_used_memory_empty"] = num(meta["redis_mem0"])
    res["redis_pubsub_channels"] = at_last("redis_pubsub_channels", sset)
    # Broadcast arrival over every socket of every process.
    probes = []
    for p in sorted(k for k in hist if k.startswith("probe")):
        pairs = merge(v for lst in hist[p].values() for v in lst)
        pid = int(p[5:])
        live = sum(x["live"] for r in reports for x in r["probes"] if x["probe_id"] == pid)
        replayed = sum(x["replayed"] for r in reports for x in r["probes"] if x["probe_id"] == pid)
        probes.append({"probe": pid, "live": live, "replayed": replayed, "expected": sockets,
                       "p50_ms": pct(pairs, 0.5), "p99_ms": pct(pairs, 0.99), "max_ms": pct(pairs, 1.0)})
    res["probes"] = probes
    steady_pairs = merge(v for s in steady for v in hist.get("all", {}).get(s, []))
    res["steady"] = {"seconds": len(steady), "p50_ms": pct(steady_pairs, 0.5),
                     "p99_ms": pct(steady_pairs, 0.99), "max_ms": pct(steady_pairs, 1.0),
                     "deliveries_per_sec": (sum(loads.get(s, {}).get("deliveries", 0) for s in steady) / len(steady)) if steady else None,
                     "sent_per_sec": (sum(loads.get(s, {}).get("sent", 0) for s in steady) / len(steady)) if steady else None}
    parts = {f"hub{i}": cpu_mean(f"hub{i}_cpu_pct", sset) for i in range(H)}
    parts["hubs"] = cpu_mean("hubs_cpu_pct", sset)
    parts["redis"] = cpu_mean("redis_cpu_pct", sset)
    parts["load"] = cpu_mean("load_cpu_pct", sset)
    res["steady_cpu_pct"] = {k: {"mean": m, "max": x} for k, (m, x) in parts.items()}
    stset = set(storm)
    # A few seconds after the last return: what the survivors keep.
    after = {s for s in seconds if storm_end + 2 <= s <= storm_end + 5}
    others_pairs = merge(v for s in storm for v in hist.get("others", {}).get(s, []))
    rec_pairs = merge(v for lst in hist.get("reconnect", {}).values() for v in lst)
    res["storm"] = {
        "killed_hub_sockets": at_last("hub0_sockets", sset),
        "drops": totals.get("drops"), "back": totals.get("reconnects"),
        "all_back": all_back, "seconds_to_all_back": back_s,
        "recovered_true": totals.get("recovered_true"), "recovered_false": totals.get("recovered_false"),
        "share_recovered_true": (totals.get("recovered_true", 0) / totals["reconnects"]) if totals.get("reconnects") else None,
        "reconnect_p50_ms": pct(rec_pairs, 0.5), "reconnect_p99_ms": pct(rec_pairs, 0.99),
        "reconnect_max_ms": pct(rec_pairs, 1.0),
        "others_p50_ms": pct(others_pairs, 0.5), "others_p99_ms": pct(others_pairs, 0.99),
        "others_max_ms": pct(others_pairs, 1.0),
        "refused_503": sum(loads.get(s, {}).get("refused_503", 0) for s in storm),
        "connect_failures": sum(loads.get(s, {}).get("connect_failures", 0) for s in storm),
        "refused_503_whole_run": totals.get("refused_503"),
        "hubs_after": [{"hub": i, "rss_kib": at_last(f"hub{i}_rss_kib", after), "sockets": at_last(f"hub{i}_sockets", after)}
                       for i in range(1, H)],
        "redis_cpu_pct": dict(zip(("mean", "max"), cpu_mean("redis_cpu_pct", stset))),
        "hubs_cpu_pct": dict(zip(("mean", "max"), cpu_mean("hubs_cpu_pct", stset))),
        "load_cpu_pct": dict(zip(("mean", "max"), cpu_mean("load_cpu_pct", stset))),
    }
    res["correctness"] = {k: totals.get(k) for k in
                          ("gaps", "duplicates", "replay_mismatch", "tail_loss", "summary_timeouts",
                           "epoch_changes", "recovered_false", "acks_not_ok", "refused_other")}
    res["up_at_end"] = up_at_end
    summary[rnd] = res
    for k in ("gaps", "duplicates", "replay_mismatch", "tail_loss", "summary_timeouts", "epoch_changes", "recovered_false"):
        if totals.get(k):
            problems.append(f"{rnd}: {k} = {totals[k]} (see round-{rnd}/load-*.log)")
    if res["never_up"]:
        problems.append(f"{rnd}: {res['never_up']} sockets never up")
    if not all_back:
        problems.append(f"{rnd}: {sockets - up_at_end} sockets not back by the end")
    for p in probes:
        if p["live"] + p["replayed"] < sockets:
            problems.append(f"{rnd}: probe {p['probe']} reached {p['live'] + p['replayed']} of {sockets} sockets")

    st, sc, sm = res["storm"], res["steady_cpu_pct"], res["steady"]
    text.append(f"== round {rnd}: {sockets:,} sockets over {H} hubs, {meta['procs']} load processes, "
                f"groups of {meta['group_size']} at {meta['group_rate']} msg/s"
                + (f", accept-rate limit {meta['limit']}/s per hub" if meta["limit"] else ", no accept-rate limit"))
    text.append(f"setup: all up in {fmt(res['setup_seconds'], ' s')} (slowest process), never up {res['never_up']}")
    rss = [h["bytes_per_socket"] for h in per_hub if h["bytes_per_socket"]]
    text.append("RSS per socket: " + ", ".join(
        f"hub {h['hub']} {h['bytes_per_socket'] / 1024:.1f} KiB ({h['sockets']:.0f} sockets, {h['rss_kib'] / 1024:.0f} MiB)"
        for h in per_hub if h["bytes_per_socket"]) + (f"; mean {sum(rss) / len(rss) / 1024:.1f} KiB" if rss else ""))
    um, um0 = res["redis_used_memory"], res["redis_used_memory_empty"]
    ug, ux = res["redis_used_memory_at_go"], res["redis_used_memory_max"]
    text.append(f"Redis: used_memory empty {fmt(um0 and um0 / 2**20, ' MiB')}, every socket up {fmt(ug and ug / 2**20, ' MiB')}, "
                f"before the kill {fmt(um and um / 2**20, ' MiB')}, most {fmt(ux and ux / 2**20, ' MiB')}; "
                f"pubsub channels {fmt(res['redis_pubsub_channels'], '', 0)}")
    for p in probes:
        text.append(f"broadcast probe {p['probe']}: reached {p['live']:,} live + {p['replayed']} replayed of {sockets:,}; "
                    f"arrival p50 {fmt(p['p50_ms'])}, p99 {fmt(p['p99_ms'])}, max {fmt(p['max_ms'])}")
    text.append(f"steady group traffic ({sm['seconds']} s, probe seconds left out): {fmt(sm['sent_per_sec'], ' msg/s', 0)}, "
                f"{fmt(sm['deliveries_per_sec'], ' deliveries/s', 0)}; latency p50 {fmt(sm['p50_ms'], ' ms', 2)}, "
                f"p99 {fmt(sm['p99_ms'], ' ms', 2)}, max {fmt(sm['max_ms'])}")
    text.append("steady CPU (% of one core, mean / max second): " + ", ".join(
        f"{k} {fmt(v['mean'], '', 0)} / {fmt(v['max'], '', 0)}" for k, v in sc.items()))
    text.append(f"storm: hub 0 killed holding {fmt(st['killed_hub_sockets'], '', 0)} sockets; {st['drops']} dropped, "
                f"{st['back']} back; all back: {st['all_back']}, {fmt(st['seconds_to_all_back'], ' s', 2)} after the kill; "
                f"recovered: true {st['recovered_true']} / false {st['recovered_false']} "
                f"(share {fmt(st['share_recovered_true'] and 100 * st['share_recovered_true'], ' %', 2)})")
    text.append(f"storm: drop to summary p50 {fmt(st['reconnect_p50_ms'], ' ms', 0)}, p99 {fmt(st['reconnect_p99_ms'], ' ms', 0)}, "
                f"max {fmt(st['reconnect_max_ms'], ' ms', 0)}; 503s {st['refused_503']}, failed connects {st['connect_failures']}")
    text.append(f"storm: the other sockets' group latency p50 {fmt(st['others_p50_ms'], ' ms', 2)}, p99 {fmt(st['others_p99_ms'], ' ms', 2)}, "
                f"max {fmt(st['others_max_ms'])}; CPU mean / max: Redis {fmt(st['redis_cpu_pct']['mean'], '', 0)} / "
                f"{fmt(st['redis_cpu_pct']['max'], '', 0)} %, hubs {fmt(st['hubs_cpu_pct']['mean'], '', 0)} / "
                f"{fmt(st['hubs_cpu_pct']['max'], '', 0)} %, load {fmt(st['load_cpu_pct']['mean'], '', 0)} / "
                f"{fmt(st['load_cpu_pct']['max'], '', 0)} %")
    text.append("storm: the survivors after it: " + ", ".join(
        f"hub {h['hub']} {h['rss_kib'] / 1024:.0f} MiB with {h['sockets']:.0f} sockets"
        for h in st["hubs_after"] if h["rss_kib"] and h["sockets"])
        + f"; 503s over the whole round {st['refused_503_whole_run']}")
    text.append("correctness: " + ", ".join(f"{k} {v}" for k, v in res["correctness"].items()))

fields = []
for r in all_rows:
    for k in r:
        if k not in fields:
            fields.append(k)
with open(f"{out}/fleet.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(all_rows)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
text += [f"PROBLEM: {p}" for p in problems]
open(f"{out}/summary.txt", "w").write("\n".join(text) + "\n")
print("\n".join(text))
sys.exit(1 if problems else 0)
PY

plot() { # round png
  local csv=$out/fleet-$1.csv png=$2 kill_t instances sockets
  [ -s "$csv" ] || return 0
  read -r kill_t instances sockets < <(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(round((m["kill_ms"]-m["go_ms"])/1000), m["instances"], m["sockets"])' "$out/round-$1/meta.json")
  local hub_lines="" i
  for ((i = 0; i < instances; i++)); do
    hub_lines+="\"\" using \"t\":(column(\"hub${i}_sockets\")) with lines title \"hub $i\", "
  done
  local rss_lines=""
  for ((i = 0; i < instances; i++)); do
    rss_lines+="\"\" using \"t\":(column(\"hub${i}_rss_kib\")/1024) with lines title \"hub $i\", "
  done
  rss_lines=${rss_lines%, }
  rss_lines=${rss_lines#\"\"}
  gnuplot <<GP || echo "benches/fleet.sh: gnuplot failed" >&2
set terminal pngcairo noenhanced size 1400,1000 font ",9"
set output "$png"
set datafile separator ","
set datafile columnheaders
set datafile missing ""
set key top left
set grid
set xlabel "seconds since go"
set arrow 1 from $kill_t, graph 0 to $kill_t, graph 1 nohead dashtype 2 linecolor rgb "red"
set multiplot layout 3,2 title "aether-hub fleet, round $1: $sockets sockets, $instances hubs, one Redis; dashed line: hub 0 killed"
set title "sockets up (load tool) and per hub (/metrics)"
plot "$csv" using "t":(column("up")) with lines linewidth 2 title "up (all)", ${hub_lines%, }
set title "per second: deliveries, reconnects (right)"
set y2tics
plot "$csv" using "t":(column("deliveries")) with lines title "deliveries", \
     "" using "t":(column("reconnects")) with impulses axes x1y2 title "back (right)", \
     "" using "t":(column("refused_503")) with lines axes x1y2 title "503s (right)"
unset y2tics
set title "group latency per second (ms)"
set logscale y
plot "$csv" using "t":(column("p50_ms")) with lines title "p50", \
     "" using "t":(column("p99_ms")) with lines title "p99", \
     "" using "t":(column("others_p99_ms")) with lines title "p99, sockets never dropped"
unset logscale y
set title "CPU (% of one core)"
plot "$csv" using "t":(column("hubs_cpu_pct")) with lines title "hubs", \
     "" using "t":(column("redis_cpu_pct")) with lines title "Redis", \
     "" using "t":(column("load_cpu_pct")) with lines title "load tool"
set title "hub RSS (MiB)"
plot "$csv" ${rss_lines}
set title "Redis used_memory (MiB), pub/sub channels (right)"
set y2tics
plot "$csv" using "t":(column("redis_used_memory")/1048576) with lines title "used_memory", \
     "" using "t":(column("redis_pubsub_channels")) with lines axes x1y2 title "channels (right)"
unset multiplot
GP
}
plot unlimited "$out/fleet.png"
[ "${#rounds[@]}" -gt 1 ] && plot limited "$out/fleet-limited.png"
echo "benches/fleet.sh: results in $out (summary.txt, fleet.csv, fleet.png)" >&2
exit "$status"
