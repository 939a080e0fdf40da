#!/bin/bash
# Builds every image of the project from its Dockerfile, unchanged (`make images`), and prints
# each image's size and build time. The engine: CONTAINER_ENGINE when set, else `docker` when a
# Docker engine answers, else `podman`. Tags: readmission-<image>:${IMAGE_TAG:-local}, the names
# docker-compose.yaml and kubernetes/overlays/local use.
# Usage: scripts/build_images.sh [image ...]    (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A DOCKERFILES=(
    [airflow]=Dockerfile
    [mlflow]=Dockerfile_mlflow
    [inference-api]=fastapi/Dockerfile
    [ui]=streamlit/Dockerfile
    [data-api]=ec2_api/Dockerfile
    [locust]=locust/Dockerfile
)
ORDER=(mlflow inference-api ui data-api locust airflow)

if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    engine=$CONTAINER_ENGINE
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
elif command -v podman >/dev/null; then
    engine=podman
else
    echo "no container engine: neither a Docker engine answers nor podman is installed" >&2
    exit 1
fi
options=()
# podman writes OCI images by default, and the OCI format has no HEALTHCHECK: it would drop them.
[[ $engine == podman ]] && options+=(--format docker)

images=("$@")
[[ ${#images[@]} -eq 0 ]] && images=("${ORDER[@]}")
for image in "${images[@]}"; do
    [[ -n "${DOCKERFILES[$image]:-}" ]] || { echo "unknown image '$image' (one of: ${ORDER[*]})" >&2; exit 2; }
done

printf '%-34s %10s %8s\n' IMAGE SIZE SECONDS
for image in "${images[@]}"; do
    tag="readmission-$image:${IMAGE_TAG:-local}"
    log=$(mktemp)
    start=$(date +%s)
    if ! "$engine" build "${options[@]}" -f "${DOCKERFILES[$image]}" -t "$tag" . >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "building $tag from ${DOCKERFILES[$image]} failed (the log's end is above)" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    seconds=$(( $(date +%s) - start ))
    bytes=$("$engine" image inspect --format '{{.Size}}' "$tag")
    printf '%-34s %7d MB %8d\n' "$tag" $(( bytes / 1000000 )) "$seconds"
done
