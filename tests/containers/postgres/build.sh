#!/bin/bash
# Builds the stand-in for the postgres image docker-compose.yaml pins (see ../README.md) unless an
# image of that name is already there.
set -euo pipefail
cd "$(dirname "$0")"
ENGINE=${ENGINE:-podman}
IMAGE=$(sed -n 's/^ *image: \(postgres:[^ ]*\)$/\1/p' ../../../docker-compose.yaml | head -1)
[[ -n $IMAGE ]] || { echo "no postgres image in docker-compose.yaml" >&2; exit 1; }
IMAGE=docker.io/library/$IMAGE
if $ENGINE image exists "$IMAGE" 2>/dev/null; then exit 0; fi
# The official image where a registry answers; the stand-in only where none does.
if timeout 600 $ENGINE pull --quiet "$IMAGE" >/dev/null 2>&1; then exit 0; fi
../python/build.sh
major=${IMAGE##*:}; major=${major%%.*}
$ENGINE build --quiet --format docker --build-arg "PG_MAJOR=$major" -t "$IMAGE" -f Containerfile . >/dev/null
echo "built the stand-in $IMAGE"
