#!/usr/bin/env bash
# Long-run benchmark: push TOTAL `true` tasks through one node (or a 3-node loopback mesh) in
# chunks, and after every chunk record each node's RSS, data-dir size, snapshot size, live and
# archived task counts, the chunk's throughput and a closed-loop submit→finish latency; at the
# end, restart a node (time to ready) and join a fresh node (time until caught up).
# Usage: bench/long_run.sh [TOTAL] [CHUNK] [NODES] [RETENTION]
#   e.g. bench/long_run.sh 1000000 50000 3     (uses target/release/testmesh unless TESTMESH_BIN)
# Prints one tab-separated line per chunk.
set -euo pipefail
bin=${TESTMESH_BIN:-target/release/testmesh}
total=${1:-1000000}
chunk=${2:-50000}
nodes=${3:-1}
retention=${4:-}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set TESTMESH_BIN)" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_file() { for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; return 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
status() { curl -s "http://$(cat "$dir/$1/http.addr")/api/v1/status"; }
common=(--http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns)
[ -n "$retention" ] && common+=(--retention "$retention")
start() { # name [extra args]
  local n=$1; shift
  "$bin" node --data-dir "$dir/$n" "${common[@]}" "$@" >>"$dir/$n.log" 2>&1 &
  pids+=($!)
  eval "pid_$n=$!"
}
names=(a b c d e)
start a
wait_file "$dir/a/mesh.addr"
join=$(head -1 "$dir/a/mesh.addr")
for ((i = 1; i < nodes; i++)); do start "${names[$i]}" --swarm-key "$dir/a/swarm.key" --join "$join"; done
for ((i = 0; i < nodes; i++)); do wait_file "$dir/${names[$i]}/http.addr"; done
until [ "$(curl -s "http://$(cat "$dir/a/http.addr")/api/v1/workers" | json 'len(d)' 2>/dev/null)" = "$nodes" ]; do sleep 0.2; done
server="http://$(cat "$dir/a/http.addr")"

printf 'tasks\tnode\trss_mib\tdata_dir_mib\tsnapshot_kib\tlive\tarchived\ttasks_per_s\tlatency_p50_ms\n'
done_tasks=0
while [ "$done_tasks" -lt "$total" ]; do
  rate=$("$bin" bench --server "$server" --data-dir "$dir/a" --tasks "$chunk" --concurrency 4 --batch 1000 --json -- true | json 'round(d["tasks_per_sec"])')
  lat=$("$bin" bench --server "$server" --data-dir "$dir/a" --tasks 30 --concurrency 1 --batch 1 --closed-loop --json -- true | json 'round(d["latency_ms_p50"],1)')
  done_tasks=$((done_tasks + chunk + 30))
  # Settle: wait until retention has archived what it will (the archived count stops moving),
  # then for the next disk sample (every 5 s) and the memory trim that follows archiving.
  prev=-1
  while :; do
    cur=$(status a | json 'd["disk"]["archived_tasks"]')
    [ "$cur" = "$prev" ] && break
    prev=$cur
    sleep 3
  done
  sleep 6
  for ((i = 0; i < nodes; i++)); do
    n=${names[$i]}
    pid_var=pid_$n
    rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/${!pid_var}/status")
    du=$(du -sm "$dir/$n" | cut -f1)
    s=$(status "$n")
    snap=$(echo "$s" | json 'round(d["disk"]["snapshot_bytes"]/1024)')
    live=$(echo "$s" | json 'sum(d["tasks"].values())')
    arch=$(echo "$s" | json 'd["disk"]["archived_tasks"]')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$done_tasks" "$n" "$rss" "$du" "$snap" "$live" "$arch" "$rate" "$lat"
  done
done

# Restart the last node: time from start to /readyz.
n=${names[$((nodes - 1))]}
pid_var=pid_$n
kill "${!pid_var}"; wait "${!pid_var}" 2>/dev/null || true
rm -f "$dir/$n/http.addr"
t0=$(date +%s%N)
if [ "$n" = a ]; then start a; else start "$n" --swarm-key "$dir/a/swarm.key" --join "$join"; fi
wait_file "$dir/$n/http.addr"
until curl -sf -o /dev/null "http://$(cat "$dir/$n/http.addr")/readyz"; do sleep 0.02; done
t1=$(date +%s%N)
echo "restart of $n with that history: $(((t1 - t0) / 1000000)) ms to ready"

# A new node joins and catches up.
if [ "$nodes" -gt 1 ]; then
  target=$(status a | json 'd["last_applied"]')
  t0=$(date +%s%N)
  start z --swarm-key "$dir/a/swarm.key" --join "$join"
  wait_file "$dir/z/http.addr"
  until [ "$(status z | json 'd["last_applied"]' 2>/dev/null || echo 0)" -ge "$target" ]; do sleep 0.02; done
  t1=$(date +%s%N)
  echo "a new node joined and caught up (applied index $target) in $(((t1 - t0) / 1000000)) ms"
fi
