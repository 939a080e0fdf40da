#!/usr/bin/env bash
# Start the data API on this instance with docker compose and wait until /health answers.
#   DATASET_DIR=/opt/data DATASET_FILE=diabetic_data.csv.gz ./start_api.sh
set -euo pipefail
cd "$(dirname "$0")"

export DATASET_DIR="${DATASET_DIR:-./data}"
export DATASET_FILE="${DATASET_FILE:-diabetic_data.csv.gz}"
port="${DATA_API_PORT:-5001}"
timeout_seconds="${START_TIMEOUT_SECONDS:-180}"

if [[ ! -f "${DATASET_DIR}/${DATASET_FILE}" ]]; then
    echo "data set not found: ${DATASET_DIR}/${DATASET_FILE} (set DATASET_DIR and DATASET_FILE)" >&2
    exit 1
fi

docker compose up -d --build

deadline=$((SECONDS + timeout_seconds))
until curl -fsS "http://127.0.0.1:${port}/health"; do
    if ((SECONDS >= deadline)); then
        echo "the data API did not answer /health within ${timeout_seconds}s; recent logs:" >&2
        docker compose logs --tail 50 data-api >&2
        exit 1
    fi
    sleep 2
done
echo
echo "data API ready on port ${port}"
