#!/bin/bash
# Builds the stand-in for the mysql image docker-compose.yaml pins (see ../README.md) unless an
# image of that name is already there.
set -euo pipefail
cd "$(dirname "$0")"
ENGINE=${ENGINE:-podman}
IMAGE=$(sed -n 's/^ *image: \(mysql:[^ ]*\)$/\1/p' ../../../docker-compose.yaml | head -1)
[[ -n $IMAGE ]] || { echo "no mysql image in docker-compose.yaml" >&2; exit 1; }
IMAGE=docker.io/library/$IMAGE
if $ENGINE image exists "$IMAGE" 2>/dev/null; then exit 0; fi
# The official image where a registry answers; the stand-in only where none does.
if timeout 600 $ENGINE pull --quiet "$IMAGE" >/dev/null 2>&1; then exit 0; fi
../python/build.sh
$ENGINE build --quiet --format docker -t "$IMAGE" -f Containerfile . >/dev/null
echo "built the stand-in $IMAGE"
