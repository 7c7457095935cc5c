#!/usr/bin/env bash
# A/B of the hot path against an earlier commit, in one run: the base's
# binaries and this tree's take turns (B A A B ...) on the same shapes, so
# both see the same machine. Per run it reports deliveries/s (the load
# tool's) and the hubs' CPU time per delivery: utime+stime of every hub
# process (/proc/PID/stat) over the whole run divided by the deliveries
# they counted (aether_messages_delivered_total), the steadier figure on a
# 2-core machine where the load tool competes for the cores.
#
#   benches/ab.sh REV [ROUNDS]     (REV: the base commit; ROUNDS: 3)
#
# AB_BASE_HUB=FILE uses that binary as the base (built from REV already)
# instead of building REV in a worktree; AB_NEW_HUB=FILE likewise for the
# other side; AB_SHAPES="memory 200 5;redis 1 1000" runs only those shapes
# (mode, groups, subscribers); AB_NEW_ARGS="--acks" passes those arguments
# to the load tool on the new side only (one binary, a feature on and off:
# AB_BASE_HUB and AB_NEW_HUB the same file). AB_NEW_TLS=1 puts the new
# side's hubs on a second, TLS-only Redis (a CA and certificate made here
# with openssl, verified by the hubs): the cost of rediss://.
# AB_BASE_ENV="AETHER_HISTORY_SIZE=0" and AB_NEW_ENV=... set hub settings on
# one side only (history off against on, with one binary).
#
# Shapes: fan-out 1 x 1,000 at full speed in memory and through two hubs
# on one Redis; 200 groups x 5 subscribers at full speed, the shape of
# group coordination, in memory and through Redis. Mode "cluster" (as in
# AB_SHAPES="cluster 200 5") puts the two hubs on a 3-master Redis Cluster
# (no replicas: on 2 cores they would only take CPU from the masters),
# made once for the whole run; its Redis CPU is the masters' sum. Loopback only; every
# run is bounded (2 s warm-up + 10 s). Through Redis it also reports the
# messages published per second (the load tool's figure) and the CPU time
# redis-server and the hubs spend per message published to Redis
# (aether_redis_publishes_total). Writes
# target/ab/results.csv and prints each shape's medians and the ratio
# new / base.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benches/ab.sh REV [ROUNDS]}
rounds=${2:-3}
out=target/ab
base=$out/base
mkdir -p "$out"

# The base, built in a worktree of its own (its own target dir).
base_hub=${AB_BASE_HUB:-$base/target/release/aether-hub}
if [ -z "${AB_BASE_HUB:-}" ]; then
  if [ ! -d "$base/src" ]; then
    git worktree add --force --detach "$base" "$rev" >/dev/null
  else
    git -C "$base" checkout --quiet --detach "$rev"
  fi
  (cd "$base" && cargo build --release --quiet --bin aether-hub)
fi
cargo build --release --quiet --bin aether-hub --bin aether-load
new_hub=${AB_NEW_HUB:-target/release/aether-hub}
load=target/release/aether-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pids=()
cleanup() { # the hubs (Redis stays for the next run)
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
hub() { # binary port [env...]
  local bin=$1 port=$2; shift 2
  env AETHER_BIND="127.0.0.1:$port" AETHER_LOG=error "$@" "$bin" & pids+=($!)
  wait_port "$port"
}
cpu_ticks() { # pid: utime + stime, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
counter() { # port name: the hub's counter so far (0 before the first)
  curl -s "127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name { n = $2 } END { printf "%d\n", n }'
}

redis_port=16499
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'cleanup; kill $redis_pid 2>/dev/null || true' EXIT
wait_port "$redis_port"
redis_url="redis://127.0.0.1:$redis_port/"
new_redis=(AETHER_REDIS_URL="$redis_url")
if [ -n "${AB_NEW_TLS:-}" ]; then
  tls=$out/tls tls_port=16498
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ab-ca \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
    -keyout "$tls/redis.key" -out "$tls/redis.csr" 2>/dev/null
  echo "subjectAltName=IP:127.0.0.1" >"$tls/ext"
  openssl x509 -req -days 2 -in "$tls/redis.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -extfile "$tls/ext" -out "$tls/redis.pem" 2>/dev/null
  redis-server --port 0 --tls-port "$tls_port" --bind 127.0.0.1 --save "" --appendonly no \
    --tls-cert-file "$tls/redis.pem" --tls-key-file "$tls/redis.key" \
    --tls-ca-cert-file "$tls/ca.pem" --tls-auth-clients no >/dev/null &
  tls_pid=$!
  trap 'cleanup; kill $redis_pid $tls_pid 2>/dev/null || true' EXIT
  wait_port "$tls_port"
  new_redis=(AETHER_REDIS_URL="rediss://127.0.0.1:$tls_port/" AETHER_REDIS_TLS_CA_FILE="$tls/ca.pem")
fi

cluster_ports=(16491 16492 16493)
cluster_pids=()
cluster_dir=$out/cluster
start_cluster() { # once, if a shape needs it
  rm -rf "$cluster_dir"
  local p
  for p in "${cluster_ports[@]}"; do
    mkdir -p "$cluster_dir/$p"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$cluster_dir/$p" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 >/dev/null &
    cluster_pids+=($!)
    wait_port "$p"
  done
  trap 'cleanup; kill $redis_pid ${tls_pid:-} ${cluster_pids[*]} 2>/dev/null || true' EXIT
  redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
  for _ in $(seq 100); do
    local ok=1
    for p in "${cluster_ports[@]}"; do
      redis-cli -p "$p" CLUSTER INFO | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.1
  done
  echo "ab.sh: the cluster did not come up" >&2
  return 1
}
[[ "${AB_SHAPES:-}" == *cluster* ]] && start_cluster

# run NAME BIN MODE GROUPS SUBSCRIBERS -> appends a CSV row
run() {
  local name=$1 bin=$2 mode=$3 groups=$4 subs=$5 ports=() urls=() extra=() env=()
  [ "$name" = new ] && read -r -a extra <<<"${AB_NEW_ARGS:-}"
  if [ "$name" = new ]; then read -r -a env <<<"${AB_NEW_ENV:-}"; else read -r -a env <<<"${AB_BASE_ENV:-}"; fi
  if [ "$mode" = memory ]; then
    ports=(18401)
    hub "$bin" 18401 "${env[@]}"
  elif [ "$mode" = cluster ]; then
    for p in "${cluster_ports[@]}"; do redis-cli -p "$p" flushall >/dev/null 2>&1 || true; done
    local seeds=127.0.0.1:16491,127.0.0.1:16492,127.0.0.1:16493
    ports=(18411 18412)
    hub "$bin" 18411 AETHER_REDIS_CLUSTER="$seeds" "${env[@]}"
    hub "$bin" 18412 AETHER_REDIS_CLUSTER="$seeds" "${env[@]}"
    sleep 1
  else
    redis-cli -p "$redis_port" flushall >/dev/null
    [ -n "${AB_NEW_TLS:-}" ] && redis-cli --tls --cacert "$tls/ca.pem" -h 127.0.0.1 -p "$tls_port" flushall >/dev/null
    local on=(AETHER_REDIS_URL="$redis_url")
    [ "$name" = new ] && on=("${new_redis[@]}")
    ports=(18411 18412)
    hub "$bin" 18411 "${on[@]}" "${env[@]}"
    hub "$bin" 18412 "${on[@]}" "${env[@]}"
    sleep 1
  fi
  for p in "${ports[@]}"; do urls+=(--url "ws://127.0.0.1:$p"); done
  local ticks0=0 ticks1=0 d0=0 d1=0 p0=0 p1=0 r0=0 r1=0 pid redis=($redis_pid)
  [ "$name" = new ] && [ -n "${AB_NEW_TLS:-}" ] && redis=($tls_pid)
  [ "$mode" = cluster ] && redis=("${cluster_pids[@]}")
  for pid in "${pids[@]}"; do ticks0=$((ticks0 + $(cpu_ticks "$pid"))); done
  for p in "${ports[@]}"; do d0=$((d0 + $(counter "$p" aether_messages_delivered_total))); done
  for p in "${ports[@]}"; do p0=$((p0 + $(counter "$p" aether_redis_publishes_total))); done
  for pid in "${redis[@]}"; do r0=$((r0 + $(cpu_ticks "$pid"))); done
  "$load" fanout "${urls[@]}" --groups "$groups" --subscribers "$subs" "${extra[@]}" --duration 10 --warmup 2 2>/dev/null > "$out/run.json"
  for pid in "${pids[@]}"; do ticks1=$((ticks1 + $(cpu_ticks "$pid"))); done
  for p in "${ports[@]}"; do d1=$((d1 + $(counter "$p" aether_messages_delivered_total))); done
  for p in "${ports[@]}"; do p1=$((p1 + $(counter "$p" aether_redis_publishes_total))); done
  for pid in "${redis[@]}"; do r1=$((r1 + $(cpu_ticks "$pid"))); done
  cleanup
  python3 - "$name" "$mode" "$groups" "$subs" "$((ticks1 - ticks0))" "$((d1 - d0))" "$(getconf CLK_TCK)" "$out/run.json" \
    "$((p1 - p0))" "$((r1 - r0))" <<'PY' | tee -a "$out/results.csv"
import json, sys
name, mode, groups, subs, ticks, delivered, hz, path, published, redis_ticks = sys.argv[1:11]
d = json.loads(open(path).read().strip().splitlines()[-1])
hz, published = int(hz), int(published)
cpu_us = int(ticks) / hz * 1e6 / max(int(delivered), 1)
# Publishes/s as the load tool measured them; CPU per publish over the
# whole run (warm-up included), divided by what the hubs published.
pub_s = d.get("published_per_sec", 0) if published else 0
redis_us = int(redis_ticks) / hz * 1e6 / published if published else 0
hub_us = int(ticks) / hz * 1e6 / published if published else 0
print(f"{name},{mode},{groups}x{subs},{d['deliveries_per_sec']:.0f},{cpu_us:.3f},{d['loss']},{d['order_violations']},"
      f"{pub_s:.0f},{redis_us:.2f},{hub_us:.2f}")
PY
}

echo "binary,mode,shape,deliveries_per_sec,hub_cpu_us_per_delivery,loss,order_violations,redis_publishes_per_sec,redis_cpu_us_per_publish,hub_cpu_us_per_publish" > "$out/results.csv"
IFS=';' read -r -a shapes <<<"${AB_SHAPES:-memory 1 1000;redis 1 1000;memory 200 5;redis 200 5}"
for round in $(seq "$rounds"); do
  for shape in "${shapes[@]}"; do
    read -r mode groups subs <<<"$shape"
    # B A in odd rounds, A B in even ones.
    if [ $((round % 2)) -eq 1 ]; then order=(base new); else order=(new base); fi
    for who in "${order[@]}"; do
      bin=$new_hub
      [ "$who" = base ] && bin=$base_hub
      run "$who" "$bin" "$mode" "$groups" "$subs" >/dev/null
    done
    echo "round $round/$rounds: $mode $groups x $subs done" >&2
  done
done

python3 - "$out/results.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
shapes = sorted({(r["mode"], r["shape"]) for r in rows}, key=lambda s: (s[1], s[0]))
print("mode,shape,base deliveries/s,new deliveries/s,ratio,base us/delivery,new us/delivery,ratio (base/new: >1 is cheaper),loss,order violations,"
      "base publishes/s,new publishes/s,ratio,base Redis us/publish,new Redis us/publish,base hubs us/publish,new hubs us/publish")
for mode, shape in shapes:
    def med(who, key):
        return statistics.median(float(r[key]) for r in rows if r["mode"] == mode and r["shape"] == shape and r["binary"] == who)
    loss = sum(int(r["loss"]) for r in rows if r["mode"] == mode and r["shape"] == shape)
    order = sum(int(r["order_violations"]) for r in rows if r["mode"] == mode and r["shape"] == shape)
    b, n = med("base", "deliveries_per_sec"), med("new", "deliveries_per_sec")
    bc, nc = med("base", "hub_cpu_us_per_delivery"), med("new", "hub_cpu_us_per_delivery")
    line = f"{mode},{shape},{b:.0f},{n:.0f},{n/b:.3f},{bc:.3f},{nc:.3f},{bc/nc:.3f},{loss},{order}"
    if mode in ("redis", "cluster"):
        bp, np_ = med("base", "redis_publishes_per_sec"), med("new", "redis_publishes_per_sec")
        line += f",{bp:.0f},{np_:.0f},{np_/max(bp, 1):.3f}"
        for key in ("redis_cpu_us_per_publish", "hub_cpu_us_per_publish"):
            line += f",{med('base', key):.2f},{med('new', key):.2f}"
    print(line)
PY
