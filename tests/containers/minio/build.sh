#!/bin/bash
# Builds the stand-ins for the minio/minio and minio/mc images docker-compose.yaml pins (see ../README.md).
set -euo pipefail
for target in mc minio; do
    "$(dirname "$0")/../build_stand_in.sh" minio "minio/$target" "$target"
done
