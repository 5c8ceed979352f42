#!/usr/bin/env bash
# Formation at scale: N nodes started at once on this machine (processes on loopback), the first
# without --join and the others with --join to it, while a client polls the seed's API. Reports
# the time until the seed lists all N as active workers, how many nodes started a cluster of
# their own (must be 1), and the idle CPU of the leader and of one follower over 10 s after.
# Usage: bench/formation.sh [N] [TRIALS]   (uses target/release/testmesh unless TESTMESH_BIN)
set -euo pipefail
bin=${TESTMESH_BIN:-target/release/testmesh}
n=${1:-30}
trials=${2:-3}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set TESTMESH_BIN)" >&2; exit 1; }
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
wait_file() { for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1; }
active() {
  curl -s --max-time 2 "http://$(cat "$1/http.addr")/api/v1/workers" |
    python3 -c 'import json,sys; print(sum(1 for w in json.load(sys.stdin) if w["state"] == "active"))' 2>/dev/null || echo 0
}
printf 'trial\tnodes\tall_active_ms\tclusters_started\tleader_idle_cpu_pct\tfollower_idle_cpu_pct\n'
for t in $(seq "$trials"); do
  dir=$(mktemp -d)
  pids=()
  common=(--http 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns)
  t0=$(date +%s%N)
  "$bin" node --data-dir "$dir/n0" "${common[@]}" >"$dir/n0.log" 2>&1 & pids+=($!)
  wait_file "$dir/n0/mesh.addr"
  join=$(head -1 "$dir/n0/mesh.addr")
  for i in $(seq 1 $((n - 1))); do
    "$bin" node --data-dir "$dir/n$i" --swarm-key "$dir/n0/swarm.key" --join "$join" "${common[@]}" \
      >"$dir/n$i.log" 2>&1 & pids+=($!)
  done
  wait_file "$dir/n0/http.addr"
  until [ "$(active "$dir/n0")" -ge "$n" ]; do
    if [ $(( ($(date +%s%N) - t0) / 1000000000 )) -gt 120 ]; then echo "trial $t: not all active after 120 s" >&2; break; fi
    sleep 0.2
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  started=$(grep -l "initialising a cluster" "$dir"/n*.log | wc -l)
  sleep 2
  c0=$(cpu_ticks "${pids[0]}"); f0=$(cpu_ticks "${pids[1]}")
  sleep 10
  c1=$(cpu_ticks "${pids[0]}"); f1=$(cpu_ticks "${pids[1]}")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "$ms" "$started" \
    "$(awk -v d=$((c1 - c0)) -v t="$tck" 'BEGIN { printf "%.1f", d * 100 / t / 10 }')" \
    "$(awk -v d=$((f1 - f0)) -v t="$tck" 'BEGIN { printf "%.1f", d * 100 / t / 10 }')"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
done
