#!/usr/bin/env bash
# Three wshub nodes on ONE port (app.reuse_port) over a private Redis: the
# one-machine way to use every core. Ctrl-C stops everything this started.
#
#   bash examples/cluster/run.sh            # port 8889, Redis on 6390
#   PORT=9000 REDIS_PORT=6400 bash examples/cluster/run.sh
#
# Then: open http://localhost:$PORT/ in several tabs (each lands on some
# node), or `curl localhost:$PORT/api/ws/status` to see "nodes": 3.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${PORT:-8889}
redis_port=${REDIS_PORT:-6390}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --quiet --bin wshub
dir=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$dir/redis.log" &
pids+=($!)
for n in 1 2 3; do
  cat >"$dir/node$n.yaml" <<YAML
app:
  host: "127.0.0.1"
  port: $port
  reuse_port: true          # all three listen on $port; the kernel spreads connections
cluster:
  redis: "redis://127.0.0.1:$redis_port/0"
  node_id: "node$n"
  presence_ttl: 10s
YAML
  ./target/release/wshub --config "$dir/node$n.yaml" 2> >(sed -u "s/^/[node$n] /" >&2) &
  pids+=($!)
done
echo "3 nodes on http://127.0.0.1:$port (Redis on $redis_port); Ctrl-C stops them" >&2
wait
