#!/bin/bash
# testmesh worker bootstrap: the EC2 user data (run by cloud-init) and the GCE startup script
# that the aws and gcp providers give every instance they launch. The provider fills in the
# placeholders: the `testmesh node` arguments (where to enrol, a join token that is used up at
# registration, join addresses and the labels that tie the worker to its launch intent), where to
# get the binary, and — only when the instance cannot enrol — the swarm key.
# Runs as root at first boot; safe to run again (GCE runs startup scripts at every boot).
set -euo pipefail

install -d -m 0755 /etc/testmesh /var/lib/testmesh
# Normally empty: the node enrols with its single-use join token (--enrol in its arguments) and
# writes the swarm key itself. Only a leader whose API the instance cannot reach puts the key here.
{{SWARM_KEY_BLOCK}}

# The image may already carry the binary (the fastest boot); otherwise fetch it.
if ! command -v testmesh >/dev/null 2>&1; then
  url={{INSTALL_URL}}
  if [ -z "$url" ]; then
    echo "testmesh is not installed and no install_url is configured" >&2
    exit 1
  fi
  curl -fsSL --retry 5 "$url" -o /usr/local/bin/testmesh
  chmod 0755 /usr/local/bin/testmesh
fi

# Quoted here-documents: nothing the provider filled in is expanded while they are written, and
# the node arguments (each single-quoted by the provider) reach testmesh exactly as given.
cat > /etc/testmesh/run <<'TESTMESH_RUN'
#!/bin/sh
exec testmesh node --data-dir /var/lib/testmesh --http 0.0.0.0:7070 --swarm-key /etc/testmesh/swarm.key {{NODE_ARGS}}
TESTMESH_RUN
chmod 0755 /etc/testmesh/run

cat > /etc/systemd/system/testmesh.service <<'UNIT'
[Unit]
Description=testmesh node
After=network-online.target
Wants=network-online.target

[Service]
Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=/etc/testmesh/run
Restart=on-failure
# SIGTERM: the node drains, hands back what it runs and leaves the cluster.
KillSignal=SIGTERM
TimeoutStopSec=45

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now testmesh.service
