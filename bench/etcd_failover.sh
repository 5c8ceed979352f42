#!/usr/bin/env bash
# etcd's failover on this machine, for comparison with bench/failover.sh: a 3-member etcd
# cluster on loopback (Debian's etcd-server, default timeouts), kill -9 of the leader (found
# with `etcdctl endpoint status`), and the time until a put through a surviving member's
# HTTP/JSON gateway succeeds. Usage: bench/etcd_failover.sh [TRIALS]
set -euo pipefail
trials=${1:-10}
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "etcd and etcdctl not found (apt-get install etcd-server etcd-client)" >&2; exit 1; }
results=()
for t in $(seq "$trials"); do
  dir=$(mktemp -d)
  cb=$((22000 + t * 10)); pb=$((32000 + t * 10))
  cluster=""; eps=""
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((pb + i)),"; eps+="http://127.0.0.1:$((cb + i)),"; done
  declare -A pid=()
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "http://127.0.0.1:$((cb + i))" --advertise-client-urls "http://127.0.0.1:$((cb + i))" \
      --listen-peer-urls "http://127.0.0.1:$((pb + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((pb + i))" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token "f$t" \
      >"$dir/e$i.log" 2>&1 &
    pid[$i]=$!
  done
  leader=""
  for _ in $(seq 300); do
    leader=$(ETCDCTL_API=3 etcdctl --endpoints="${eps%,}" endpoint status -w json 2>/dev/null |
      python3 -c 'import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"].rsplit(":", 1)[1])' 2>/dev/null || true)
    [ -n "$leader" ] && break
    sleep 0.1
  done
  li=$((leader - cb)); si=$(( li % 3 + 1 ))
  t0=$(date +%s%N)
  kill -9 "${pid[$li]}"
  until curl -sf -o /dev/null --max-time 1 -X POST "http://127.0.0.1:$((cb + si))/v3/kv/put" \
      -d '{"key":"aw==","value":"dg=="}'; do sleep 0.01; done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  results+=("$ms")
  echo "trial $t: first committed put ${ms} ms after the leader was killed"
  kill -9 "${pid[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
done
printf '%s\n' "${results[@]}" | sort -n | python3 -c '
import sys
v=[int(x) for x in sys.stdin]
p=lambda q: v[min(len(v)-1, int(round((len(v)-1)*q)))]
print(f"etcd failover over {len(v)} trials: p50 {p(0.5)} ms, p99 {p(0.99)} ms, max {v[-1]} ms")'
