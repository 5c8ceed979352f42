#!/usr/bin/env python3
"""Discovery and gossip benchmark.

Starts a 3-node cluster, then, TRIALS times, starts a new node and times how long until every
one of the 3 peers lists it in /api/v1/workers (process start, mesh connection, join as a
learner, worker registration committed and applied everywhere). Each new node then leaves with
SIGTERM. At the end, every node's /api/v1/stats gives the delivery delay percentiles of the
stats gossip it received from each peer (sender's sampling time to arrival).

Usage: bench/discovery.py [TRIALS] [--mdns] [--gossip-secs N]
  --mdns: find peers by mDNS on the host's interfaces instead of --join on loopback
          (needs an interface with multicast).
  --gossip-secs N: keep the 3 peers running N more seconds before reading the gossip delays
          (default 60), so that the percentiles cover enough messages.
Uses target/release/testmesh unless TESTMESH_BIN is set.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ.get("TESTMESH_BIN", "target/release/testmesh")
argv = sys.argv[1:]
GOSSIP_SECS = 60
if "--gossip-secs" in argv:
    i = argv.index("--gossip-secs")
    GOSSIP_SECS = int(argv[i + 1])
    del argv[i : i + 2]
MDNS = "--mdns" in argv
args = [a for a in argv if not a.startswith("--")]
TRIALS = int(args[0]) if args else 20


def wait_file(path, secs=30):
    end = time.time() + secs
    while time.time() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path).read().strip()
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {path}")


def get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def start(root, name, key=None, join=None):
    d = os.path.join(root, name)
    cmd = [BIN, "node", "--data-dir", d, "--http", "127.0.0.1:0"]
    if MDNS:
        cmd += ["--listen", "/ip4/0.0.0.0/tcp/0"]
    else:
        cmd += ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]
        if join:
            cmd += ["--join", join]
    if key:
        cmd += ["--swarm-key", key]
    log = open(os.path.join(root, name + ".log"), "w")
    return d, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * q))]


def main():
    if not os.access(BIN, os.X_OK):
        raise SystemExit("build first: cargo build --release (or set TESTMESH_BIN)")
    root = tempfile.mkdtemp()
    procs = []
    try:
        a, p = start(root, "a")
        procs.append(p)
        join = wait_file(os.path.join(a, "mesh.addr")).splitlines()[0]
        key = os.path.join(a, "swarm.key")
        peers = [a]
        for n in "bc":
            d, p = start(root, n, key, join)
            procs.append(p)
            peers.append(d)
        urls = [f"http://{wait_file(os.path.join(d, 'http.addr'))}" for d in peers]
        while not all(len(get(u + "/api/v1/workers")) == 3 for u in urls):
            time.sleep(0.05)
        times = []
        for t in range(TRIALS):
            t0 = time.time()
            d, p = start(root, f"new{t}", key, join)
            me = wait_file(os.path.join(d, "node.id"))
            seen = set()
            while len(seen) < len(urls):
                for u in urls:
                    if u not in seen and any(
                        w["id"] == me and w["state"] == "active"
                        for w in get(u + "/api/v1/workers")
                    ):
                        seen.add(u)
                if time.time() - t0 > 30:
                    raise SystemExit(f"trial {t}: node {me} not seen everywhere in 30 s")
                time.sleep(0.01)
            ms = (time.time() - t0) * 1000
            times.append(ms)
            print(f"trial {t + 1}: new node in every peer's worker list after {ms:.0f} ms")
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
        print(
            f"discovery over {len(times)} trials: p50 {pct(times, 0.5):.0f} ms, "
            f"p99 {pct(times, 0.99):.0f} ms, max {max(times):.0f} ms"
        )
        time.sleep(GOSSIP_SECS)
        p50s, p99s, counts = [], [], 0
        for u in urls:
            for node, s in get(u + "/api/v1/stats")["nodes"].items():
                dl = s.get("delivery")
                if dl:
                    p50s.append(dl["p50_ms"])
                    p99s.append(dl["p99_ms"])
                    counts += dl["count"]
        print(
            f"stats gossip over {counts} deliveries between the 3 peers: "
            f"p50 {max(p50s)} ms, p99 {max(p99s)} ms (worst pair)"
        )
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
