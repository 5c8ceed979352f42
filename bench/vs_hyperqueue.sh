#!/usr/bin/env bash
# testmesh against HyperQueue in the same run, alternating: each pair starts a fresh testmesh
# node and runs `testmesh bench --tasks N -- true`, then a fresh HyperQueue server and worker and
# runs `hq submit --array 1-N --stdout=none --stderr=none --wait -- true`. Prints, per pair, both
# rates, their ratio and the CPU each spent per task (utime+stime of the testmesh node; of the
# HyperQueue server plus worker).
# Usage: HQ_BIN=/path/to/hq bench/vs_hyperqueue.sh [PAIRS] [TASKS]
#   (uses target/release/testmesh unless TESTMESH_BIN; see docs/benchmarks.md for building hq)
set -euo pipefail
bin=${TESTMESH_BIN:-target/release/testmesh}
hq=${HQ_BIN:?set HQ_BIN to a built hq binary}
pairs=${1:-5}
n=${2:-10000}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set TESTMESH_BIN)" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
tck=$(getconf CLK_TCK)
# CPU seconds (user + system) used so far by a process, as microseconds.
cpu_us() { awk -v t="$tck" '{ sub(/.*\) /, ""); print int(($12 + $13) * 1000000 / t) }' "/proc/$1/stat"; }
now_ns() { date +%s%N; }
wait_file() { for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; return 1; }

printf 'pair\ttestmesh_per_s\thq_per_s\tratio\ttestmesh_us_cpu_per_task\thq_us_cpu_per_task\n'
for p in $(seq "$pairs"); do
  d="$dir/tm$p"
  "$bin" node --data-dir "$d" --http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns >"$d.log" 2>&1 &
  node=$!; pids+=($node)
  wait_file "$d/http.addr"
  server="http://$(cat "$d/http.addr")"
  until curl -sf -o /dev/null "$server/readyz"; do sleep 0.05; done
  c0=$(cpu_us "$node")
  tm=$("$bin" bench --server "$server" --data-dir "$d" --tasks "$n" --json -- true |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tasks_per_sec"]))')
  c1=$(cpu_us "$node")
  kill "$node"; wait "$node" 2>/dev/null || true

  export HQ_SERVER_DIR="$dir/hq$p"
  mkdir -p "$HQ_SERVER_DIR" "$dir/hqw$p"
  "$hq" server start --host 127.0.0.1 >"$dir/hq$p.log" 2>&1 &
  srv=$!; pids+=($srv)
  until "$hq" server info >/dev/null 2>&1; do sleep 0.1; done
  "$hq" worker start --work-dir "$dir/hqw$p" >"$dir/hqw$p.log" 2>&1 &
  wrk=$!; pids+=($wrk)
  until [ "$("$hq" worker list --output-mode json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null)" = 1 ]; do sleep 0.1; done
  s0=$(cpu_us "$srv"); w0=$(cpu_us "$wrk"); t0=$(now_ns)
  "$hq" submit --array "1-$n" --stdout=none --stderr=none --wait -- true >/dev/null
  t1=$(now_ns); s1=$(cpu_us "$srv"); w1=$(cpu_us "$wrk")
  "$hq" server stop >/dev/null 2>&1 || true
  wait "$srv" "$wrk" 2>/dev/null || true

  hqr=$(( n * 1000000000 / (t1 - t0) ))
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$tm" "$hqr" \
    "$(python3 -c "print(round($tm / $hqr, 2))")" \
    $(( (c1 - c0) / n )) $(( (s1 - s0 + w1 - w0) / n ))
done
