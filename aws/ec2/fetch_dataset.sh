#!/usr/bin/env bash
# Put the data set on the instance's disk once: copy or download DATASET_URL (a URL or a local
# path) to DATASET_DIR/DATASET_FILE unless that file is already there. Run by the systemd unit.
set -euo pipefail
: "${DATASET_DIR:?set DATASET_DIR}" "${DATASET_FILE:?set DATASET_FILE}"
target="$DATASET_DIR/$DATASET_FILE"

if [[ -s "$target" ]]; then
    echo "data set present: $target"
    exit 0
fi
if [[ -z "${DATASET_URL:-}" ]]; then
    echo "no data set at $target and DATASET_URL is empty" >&2
    exit 1
fi

mkdir -p "$DATASET_DIR"
partial="$target.part"
case "$DATASET_URL" in
    http://* | https://*) curl -fsSL --retry 5 --retry-delay 5 -o "$partial" "$DATASET_URL" ;;
    *) cp "$DATASET_URL" "$partial" ;;
esac
# Readable by the container's non-root user; renamed last, so a half-download is never used.
chmod 0644 "$partial"
mv "$partial" "$target"
echo "data set downloaded: $target ($(du -h "$target" | cut -f1))"
