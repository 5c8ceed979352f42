#!/usr/bin/env bash
# Failover benchmark: start a 3-node loopback cluster, kill -9 the Raft leader, and time how long
# until a client retrying a submit on a surviving node gets its first committed write.
# Usage: bench/failover.sh [TRIALS]   (uses target/release/testmesh unless TESTMESH_BIN is set)
set -euo pipefail
bin=${TESTMESH_BIN:-target/release/testmesh}
trials=${1:-20}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set TESTMESH_BIN)" >&2; exit 1; }

wait_file() { for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; return 1; }
workers() { curl -s "http://$(cat "$1/http.addr")/api/v1/workers" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
# "LEADER TERM" as one node sees them.
view() { curl -s "http://$(cat "$1/http.addr")/api/v1/status" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["leader"] or "-", d["term"])'; }

results=()
for t in $(seq "$trials"); do
  dir=$(mktemp -d)
  pids=()
  common=(--http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns)
  "$bin" node --data-dir "$dir/a" "${common[@]}" >"$dir/a.log" 2>&1 & pids+=($!)
  wait_file "$dir/a/mesh.addr"
  join=$(head -1 "$dir/a/mesh.addr")
  for n in b c; do
    "$bin" node --data-dir "$dir/$n" --swarm-key "$dir/a/swarm.key" --join "$join" "${common[@]}" >"$dir/$n.log" 2>&1 & pids+=($!)
  done
  for n in a b c; do wait_file "$dir/$n/http.addr"; done
  for _ in $(seq 200); do [ "$(workers "$dir/a")" = 3 ] && break; sleep 0.1; done
  sleep 1 # let promotions settle
  # The victim must be the leader: all three nodes agree on it and on the term (a node's view
  # alone may be stale, and killing a follower is no failover).
  for _ in $(seq 100); do
    views=$(for n in a b c; do view "$dir/$n"; done | sort -u)
    [ "$(echo "$views" | wc -l)" = 1 ] && [ "${views%% *}" != "-" ] && break
    sleep 0.1
  done
  [ "$(echo "$views" | wc -l)" = 1 ] || { echo "trial $t: the nodes disagree on the leader: $views" >&2; exit 1; }
  l=${views%% *}; term=${views##* }
  i=0; victim=""; survivor=""
  for n in a b c; do
    if [ "$(cat "$dir/$n/node.id")" = "$l" ]; then victim=${pids[$i]}; else survivor=$n; fi
    i=$((i + 1))
  done
  [ -n "$victim" ] || { echo "trial $t: leader $l is none of the three" >&2; exit 1; }
  url="http://$(cat "$dir/$survivor/http.addr")/api/v1/tasks"
  token=$(cat "$dir/$survivor/api-token")
  t0=$(date +%s%N)
  kill -9 "$victim"
  until curl -sf -o /dev/null -X POST -H "Authorization: Bearer $token" -H 'content-type: application/json' \
      -d '{"tasks":[{"command":["true"],"cpu":"10m"}]}' "$url"; do sleep 0.01; done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  # A real failover: a new leader in a later term.
  read -r l2 term2 < <(view "$dir/$survivor")
  if [ "$l2" = "$l" ] || [ "$term2" -le "$term" ]; then
    echo "trial $t: no failover seen (leader $l2 term $term2, before $l term $term)" >&2; exit 1
  fi
  results+=("$ms")
  echo "trial $t: first committed write ${ms} ms after the leader was killed"
  kill -9 "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
done
printf '%s\n' "${results[@]}" | sort -n | python3 -c '
import sys
v=[int(x) for x in sys.stdin]
p=lambda q: v[min(len(v)-1, int(round((len(v)-1)*q)))]
print(f"failover over {len(v)} trials: p50 {p(0.5)} ms, p99 {p(0.99)} ms, max {v[-1]} ms")'
