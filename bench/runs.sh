#!/usr/bin/env bash
# Runs, measured: the sharded fixture suite on 1 and on 3 local nodes (each shard takes a whole
# 2-core node), and the cost of a run against plain submits of the same tasks.
#   bash bench/runs.sh [path/to/testmesh]      (default: target/release/testmesh)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/testmesh}
SUITE=tests/fixtures/suite.py
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
wait_file() { for _ in $(seq 300); do [ -s "$1" ] && return; sleep 0.1; done; echo "no $1" >&2; exit 1; }
node() { # name, extra args...
  local d="$dir/$1"; shift
  "$BIN" node --data-dir "$d" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns "$@" \
    >"$dir/$(basename "$d").out" 2>"$dir/$(basename "$d").log" &
  pids+=($!)
  wait_file "$d/http.addr"
}
cli() { TESTMESH_SERVER="http://$(cat "$dir/a/http.addr")" TESTMESH_TOKEN="$(cat "$dir/a/api-token")" "$BIN" "$@"; }
ready() { for _ in $(seq 300); do
  n=$(cli workers --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$n" -ge "$1" ] && return; sleep 0.1; done; echo "workers never reached $1" >&2; exit 1; }
secs() { python3 -c "import time; print(time.time())"; }
suite() { # label
  local t0 t1
  t0=$(secs)
  cli run --shards 3 --cpu 2 --name "suite-$1" -- python3 "$SUITE" --shard-id={shard} --num-shards={shards} --case-seconds 0.5 >/dev/null 2>&1 || true
  t1=$(secs)
  python3 -c "print(f'sharded suite (24 cases x 0.5 s, 3 shards) on $1: {$t1 - $t0:.2f} s wall')"
}

t0=$(secs); python3 "$SUITE" --case-seconds 0.5 >/dev/null || true; t1=$(secs)
python3 -c "print(f'the same suite run locally in one process: {$t1 - $t0:.2f} s wall')"

node a
ready 1
suite "1 node"
for t in 200 1000; do
  t0=$(secs); cli run --shards "$t" --cpu 10m --name "overhead-$t" -- true >/dev/null 2>&1; t1=$(secs)
  python3 -c "print(f'run of $t tasks (true), submit to summary: {$t1 - $t0:.2f} s, {($t1 - $t0) / $t * 1000:.2f} ms/task')"
  cli bench --tasks "$t" --batch 100 -- true 2>/dev/null | grep -iE "wall|throughput|tasks/s" | sed "s/^/plain submits of $t tasks (bench, batches of 100): /" || true
done

key="$dir/a/swarm.key"; join=$(head -1 "$dir/a/mesh.addr")
node b --swarm-key "$key" --join "$join"
node c --swarm-key "$key" --join "$join"
ready 3
suite "3 nodes"
