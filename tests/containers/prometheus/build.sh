#!/bin/bash
# Builds the stand-ins for the prom/* images docker-compose.yaml pins (see ../README.md).
set -euo pipefail
for target in prometheus pushgateway statsd-exporter node-exporter; do
    "$(dirname "$0")/../build_stand_in.sh" prometheus "prom/$target" "$target"
done
