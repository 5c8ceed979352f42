#!/usr/bin/env python3
"""Scale-out latency benchmark.

Starts one node (1 core offered) whose autoscaler may launch workers from PROVIDER, then,
TRIALS times: submits a task that only a launched worker can hold (2 cores), and reads from the
ledger's own timestamps
  - backlog -> decision: the task's submission to the scale-up decision that followed it,
  - decision -> first task start: that decision to the moment the task started on the new
    worker (launch, boot, join the mesh, register, get the task, start it),
then waits until the idle worker has been drained and removed before the next trial.

Usage: bench/scaling.py [TRIALS] [--provider sim|docker] [--image TAG]
  --provider docker needs the image (deploy/docker/build-image.sh --tag TAG, default
  testmesh:dev) and a running Docker engine; containers join the leader through the bridge.
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


def opt(name, default):
    if name in argv:
        i = argv.index(name)
        v = argv[i + 1]
        del argv[i : i + 2]
        return v
    return default


PROVIDER = opt("--provider", "sim")
IMAGE = opt("--image", "testmesh:dev")
TRIALS = int(argv[0]) if argv else 10


def call(url, method="GET", body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait(f, secs, what):
    end = time.time() + secs
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


root = tempfile.mkdtemp(prefix="testmesh-scaling-")
network = f"testmesh-bench-{os.getpid()}"
cfg = os.path.join(root, "node.toml")
with open(cfg, "w") as f:
    f.write(
        f"""version = 1
[[instance_types]]
provider = "{PROVIDER}"
name = "w2"
cpus = "2"
memory = "1GiB"
price_per_hour = 0.05
boot_secs = 5

[[providers]]
kind = "{PROVIDER}"
"""
    )
    if PROVIDER == "docker":
        f.write(f'image = "{IMAGE}"\nnetwork = "{network}"\n')
    else:
        f.write(f'dir = "{root}/sim"\n')
if PROVIDER == "docker":
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)

data = os.path.join(root, "leader")
log = open(os.path.join(root, "leader.log"), "w")
listen = ["--listen", "/ip4/0.0.0.0/tcp/0"] if PROVIDER == "docker" else ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]
node = subprocess.Popen(
    [BIN, "node", "--data-dir", data, "--http", "127.0.0.1:0", "--config", cfg, "--cpus", "1"] + listen,
    stdout=subprocess.DEVNULL,
    stderr=log,
)
try:
    http = wait(lambda: os.path.exists(f"{data}/http.addr") and open(f"{data}/http.addr").read().strip(), 30, "the node")
    base = f"http://{http}"
    token = open(f"{data}/api-token").read().strip()
    wait(lambda: call(f"{base}/api/v1/scaling")["cluster_id"], 30, "leadership")
    call(
        f"{base}/api/v1/policy",
        "PUT",
        {
            "enabled": True,
            "providers": [PROVIDER],
            "scale_up_cooldown": "0s",
            "scale_down_cooldown": "0s",
            "idle_timeout": "1s",
            "max_workers": 2,
        },
        token,
    )
    to_decision, to_start = [], []
    for trial in range(TRIALS):
        r = call(
            f"{base}/api/v1/tasks",
            "POST",
            {"tasks": [{"command": ["true"], "cpu": 2}], "allow_unschedulable": True},
            token,
        )
        tid = r["tasks"][0]
        task = wait(
            lambda: (lambda t: t if t["state"] == "succeeded" else None)(call(f"{base}/api/v1/tasks/{tid}")),
            120,
            f"task {tid}",
        )
        submitted = task["submitted_at"]
        started = task["attempts"][-1]["started_at"]
        s = call(f"{base}/api/v1/scaling?limit=1000")
        up = min(
            (d for d in s["decisions"] if d["kind"] == "up" and d["at"] >= submitted),
            key=lambda d: d["at"],
        )
        to_decision.append(up["at"] - submitted)
        to_start.append(started - up["at"])
        print(f"trial {trial + 1}: backlog->decision {up['at'] - submitted} ms, decision->task started {started - up['at']} ms", flush=True)
        wait(
            lambda: all(i["state"] in ("terminated", "failed") for i in call(f"{base}/api/v1/scaling")["instances"]),
            120,
            "scale-in",
        )
    print(
        json.dumps(
            {
                "provider": PROVIDER,
                "trials": TRIALS,
                "backlog_to_decision_ms": {"p50": pct(to_decision, 50), "p90": pct(to_decision, 90), "max": max(to_decision)},
                "decision_to_first_task_ms": {"p50": pct(to_start, 50), "p90": pct(to_start, 90), "max": max(to_start)},
            },
            indent=2,
        )
    )
finally:
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        node.kill()
    if PROVIDER == "docker":
        out = subprocess.run(["docker", "ps", "-aq", "--filter", "label=testmesh.cluster"], capture_output=True, text=True).stdout.split()
        for c in out:
            labels = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.NetworkMode}}", c], capture_output=True, text=True).stdout.strip()
            if labels == network:
                subprocess.run(["docker", "rm", "-f", c], capture_output=True)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
    subprocess.run(["pkill", "-f", root])
    shutil.rmtree(root, ignore_errors=True)
