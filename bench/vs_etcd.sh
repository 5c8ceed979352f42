#!/usr/bin/env bash
# Commit latency of testmesh's Raft against etcd's in the same run, alternating: `testmesh bench
# raft` (3 voters with durable redb ledgers on a libp2p mesh over loopback, one writer) and a
# 3-member etcd cluster on loopback (default settings, durable WAL) with one client doing
# sequential puts through etcd's HTTP/JSON gateway over one keep-alive connection (the gateway
# adds a loopback gRPC hop, so etcd's figure is slightly pessimistic).
# Usage: bench/vs_etcd.sh [ROUNDS] [WRITES]   (needs etcd on PATH: Debian's etcd-server)
set -euo pipefail
bin=${TESTMESH_BIN:-target/release/testmesh}
rounds=${1:-3}
writes=${2:-2000}
command -v etcd >/dev/null || { echo "etcd not found (apt-get install etcd-server)" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

etcd_round() {
  # Ports of their own per round: a member of the last round may still hold its own.
  local r=$1 cluster="" i cb=$((23000 + $1 * 100)) pb=$((33000 + $1 * 100))
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((pb + i)),"; done
  pids=()
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/etcd$r-$i" \
      --listen-client-urls "http://127.0.0.1:$((cb + i))" \
      --advertise-client-urls "http://127.0.0.1:$((cb + i))" \
      --listen-peer-urls "http://127.0.0.1:$((pb + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((pb + i))" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new \
      --initial-cluster-token "bench$r" >"$dir/etcd$r-$i.log" 2>&1 &
    pids+=($!)
  done
  python3 - "$writes" "$((cb + 1))" <<'PY' || tail -n 5 "$dir"/etcd"$r"-*.log >&2
import base64, http.client, json, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
# Wait for a leader, then write through member 1.
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/v3/kv/put", json.dumps({"key": "aw==", "value": "dg=="}))
        if c.getresponse().status == 200:
            break
    except OSError:
        pass
    time.sleep(0.1)
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
lat = []
for i in range(n):
    body = json.dumps({"key": base64.b64encode(b"k%d" % (i % 100)).decode(),
                       "value": base64.b64encode(b"v%d" % i).decode()})
    t0 = time.perf_counter()
    c.request("POST", "/v3/kv/put", body)
    r = c.getresponse(); r.read()
    lat.append((time.perf_counter() - t0) * 1000)
    assert r.status == 200, r.status
lat.sort()
print("%.2f %.2f" % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
PY
  local rc=$?
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
  return $rc
}

printf 'round\ttestmesh_p50_ms\ttestmesh_p99_ms\tetcd_p50_ms\tetcd_p99_ms\n'
for r in $(seq "$rounds"); do
  tm=$("$bin" bench raft --voters 3 --single "$writes" --writes 2000 --dir "$dir/tm$r" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f\t%.2f" % (d["single_p50_ms"], d["single_p99_ms"]))')
  read -r e50 e99 < <(etcd_round "$r")
  printf '%s\t%s\t%s\t%s\n' "$r" "$tm" "$e50" "$e99"
done
