#!/bin/bash
# Builds one stand-in for an image docker-compose.yaml pins (see README.md), unless an image of that
# name is already there or a registry gives the official one.
# usage: build_stand_in.sh FOLDER NAME [TARGET]
#   FOLDER: the folder of its Containerfile; NAME: the image's name in docker-compose.yaml (mysql,
#   minio/mc, prom/pushgateway...); TARGET: the Containerfile's stage to build, when it has several.
set -euo pipefail
cd "$(dirname "$0")"
ENGINE=${ENGINE:-podman}
folder=$1 name=$2 target=${3:-}
image=$(sed -n "s#^ *image: \($name:[^ ]*\)\$#\1#p" ../../docker-compose.yaml | head -1)
[[ -n $image ]] || { echo "no $name image in docker-compose.yaml" >&2; exit 1; }
if [[ $name == */* ]]; then image=docker.io/$image; else image=docker.io/library/$image; fi
if $ENGINE image exists "$image" 2>/dev/null; then exit 0; fi
# The official image where a registry answers; the stand-in only where none does.
if timeout 600 $ENGINE pull --quiet "$image" >/dev/null 2>&1; then exit 0; fi
python/build.sh
$ENGINE build --quiet --format docker ${target:+--target "$target"} -t "$image" -f "$folder/Containerfile" "$folder" >/dev/null
echo "built the stand-in $image"
