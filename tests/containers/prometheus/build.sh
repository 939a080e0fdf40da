#!/bin/bash
# Builds the stand-ins for the prom/* images docker-compose.yaml pins (see ../README.md) unless
# images of those names are already there.
set -euo pipefail
cd "$(dirname "$0")"
ENGINE=${ENGINE:-podman}
for target in prometheus pushgateway statsd-exporter node-exporter; do
    IMAGE=$(sed -n "s/^ *image: \(prom\/$target:[^ ]*\)$/\1/p" ../../../docker-compose.yaml | head -1)
    [[ -n $IMAGE ]] || { echo "no prom/$target image in docker-compose.yaml" >&2; exit 1; }
    IMAGE=docker.io/$IMAGE
    if $ENGINE image exists "$IMAGE" 2>/dev/null; then continue; fi
    # The official image where a registry answers; the stand-in only where none does.
    if timeout 600 $ENGINE pull --quiet "$IMAGE" >/dev/null 2>&1; then continue; fi
    ../python/build.sh
    $ENGINE build --quiet --format docker --target "$target" -t "$IMAGE" -f Containerfile . >/dev/null
    echo "built the stand-in $IMAGE"
done
