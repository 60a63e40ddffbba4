#!/usr/bin/env bash
# Three wshub nodes on ONE port (app.reuse_port) over a private Redis: the
# one-machine way to use every core. Ctrl-C stops everything this started.
#
#   bash examples/cluster/run.sh            # port 8889, Redis on 6390
#   PORT=9000 REDIS_PORT=6400 bash examples/cluster/run.sh
#
# It exits non-zero, saying which, if Redis or a node does not come up
# (a port taken, say) or exits later.
#
# Then: open http://localhost:$PORT/ in several tabs (each lands on some
# node), or `curl localhost:$PORT/api/ws/status` to see "nodes": 3.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${PORT:-8889}
redis_port=${REDIS_PORT:-6390}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
# WSHUB_BIN=path uses a binary you built; by default a release build.
bin=${WSHUB_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin wshub
  bin=./target/release/wshub
fi
dir=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$dir/redis.log" 2>&1 &
pids+=($!)
# Our Redis, not another one already on that port.
for _ in $(seq 1 50); do
  kill -0 "${pids[0]}" 2>/dev/null || { echo "run.sh: redis-server exited (port $redis_port taken?):" >&2; cat "$dir/redis.log" >&2; exit 1; }
  (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
  sleep 0.1
done
for n in 1 2 3; do
  cat >"$dir/node$n.yaml" <<YAML
app:
  host: "127.0.0.1"
  port: $port
  reuse_port: true          # all three listen on $port; the kernel spreads connections
cluster:
  redis: "redis://127.0.0.1:$redis_port/0"
  node_id: "node$n"          # explicit: a restarted node replaces its own presence
  presence_ttl: 10s
YAML
  "$bin" --config "$dir/node$n.yaml" 2> >(sed -u "s/^/[node$n] /" >&2) &
  pids+=($!)
done

# Every process must be up: Redis answering, each node still running and
# part of the cluster (/health?cluster=required), else say which and stop.
fail() {
  echo "run.sh: $*; stopping" >&2
  sed "s/^/[redis] /" "$dir/redis.log" | tail -5 >&2
  exit 1
}
up=0
for _ in $(seq 1 100); do
  kill -0 "${pids[0]}" 2>/dev/null || fail "redis-server exited (port $redis_port taken?), see below"
  for n in 1 2 3; do
    kill -0 "${pids[$n]}" 2>/dev/null || fail "node$n exited (port $port taken without reuse_port?), see its log above"
  done
  nodes=$(curl -fsS "http://127.0.0.1:$port/api/ws/status" 2>/dev/null | grep -o '"nodes":[0-9]*' | cut -d: -f2 || true)
  if [ "${nodes:-0}" = 3 ] && curl -fsS "http://127.0.0.1:$port/health?cluster=required" >/dev/null 2>&1; then
    up=1
    break
  fi
  sleep 0.1
done
[ "$up" = 1 ] || fail "the 3 nodes did not form a cluster within 10 s"
echo "3 nodes on http://127.0.0.1:$port (Redis on $redis_port); Ctrl-C stops them" >&2
# Any process ending ends the example, loudly.
wait -n
fail "a process exited"
