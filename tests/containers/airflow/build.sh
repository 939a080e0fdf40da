#!/bin/bash
# Builds the stand-in for apache/airflow:<pinned>-python3.11 (see ../README.md) unless an image of
# that name is already there. The version is the one pyproject.toml pins.
set -euo pipefail
cd "$(dirname "$0")"
ENGINE=${ENGINE:-podman}
version=$(sed -n 's/.*"apache-airflow\(\[[a-z,]*\]\)\?==\([0-9.]*\)".*/\2/p' ../../../pyproject.toml | head -1)
[[ -n $version ]] || { echo "no apache-airflow==<version> pin found in pyproject.toml" >&2; exit 1; }
IMAGE=docker.io/apache/airflow:$version-python3.11
if $ENGINE image exists "$IMAGE" 2>/dev/null; then exit 0; fi
# The official image where a registry answers; the stand-in only where none does.
if timeout 600 $ENGINE pull --quiet "$IMAGE" >/dev/null 2>&1; then exit 0; fi
../python/build.sh
$ENGINE build --quiet --format docker --build-arg "AIRFLOW_VERSION=$version" -t "$IMAGE" -f Containerfile . >/dev/null
echo "built the stand-in $IMAGE"
