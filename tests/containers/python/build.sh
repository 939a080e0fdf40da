#!/bin/bash
# Builds the stand-in for docker.io/library/python:3.11-slim-bookworm from Debian's packages
# (see ../README.md): nothing is done when an image of that name is already there.
set -euo pipefail
IMAGE=docker.io/library/python:3.11-slim-bookworm
ENGINE=${ENGINE:-podman}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if $ENGINE image exists "$IMAGE" 2>/dev/null; then exit 0; fi
# The official image where a registry answers; the stand-in only where none does.
if timeout 600 $ENGINE pull --quiet "$IMAGE" >/dev/null 2>&1; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
# The official image's layout: its interpreter and pip in /usr/local/bin.
chroot "$work/rootfs" python3 -m venv /usr/local
# pip reaches PyPI through this machine's TLS-inspecting network only with the machine's CA bundle.
cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$work/rootfs/etc/pip.conf"
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
$ENGINE import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
echo "built the stand-in $IMAGE"
