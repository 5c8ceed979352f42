#!/usr/bin/env bash
# Builds a container image of testmesh without any registry or base image: a root file system
# with the binary, the shared libraries it links, and a static busybox for task shells, imported
# with `docker import`.
# Usage: deploy/docker/build-image.sh [--binary PATH] [--tag NAME]
#   default binary: target/release/testmesh (built if missing); default tag: testmesh:dev
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="" tag="testmesh:dev"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "unknown argument $1; use --binary PATH and/or --tag NAME" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  binary="${CARGO_TARGET_DIR:-target}/release/testmesh"
  [ -x "$binary" ] || cargo build --release -p testmesh --bin testmesh
fi
busybox=$(command -v busybox || true)
# ldd fails on a static executable, which is what task shells in the image need.
if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "a static busybox is needed for task shells: apt-get install busybox-static" >&2
  exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/tmp" "$root/data" "$root/etc"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/testmesh"
# The libraries the binary links, at the same paths (the loader included).
ldd "$binary" | grep -oE '/[^ ]+' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp "$busybox" "$root/bin/busybox"
for applet in sh ls cat echo sleep true false env ps kill hostname head tail grep; do
  ln -s busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/data:/bin/sh" > "$root/etc/passwd"
echo "hosts: files dns" > "$root/etc/nsswitch.conf"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/bin' \
  --change 'WORKDIR /data' \
  --change 'ENTRYPOINT ["/usr/local/bin/testmesh"]' \
  --change 'CMD ["node", "--data-dir", "/data", "--http", "0.0.0.0:7070"]' \
  - "$tag" >/dev/null
echo "built image $tag from $binary"
