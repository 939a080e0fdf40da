#!/usr/bin/env bash
# The stand-in's entrypoint, written here to the contract of the official image's entrypoint:
#   - the group must be 0 (any uid may run the image; files are group-writable, umask 0002);
#   - it waits until the metadata database answers (`airflow db check`), CONNECTION_CHECK_MAX_COUNT
#     tries CONNECTION_CHECK_SLEEP_TIME seconds apart (0 tries: no wait);
#   - _AIRFLOW_DB_MIGRATE set: `airflow db migrate` first;
#   - `bash ...` and `python ...` run as given; anything else runs as `airflow <args>`, with a
#     leading `airflow` accepted (`airflow scheduler` and `scheduler` are the same).
set -euo pipefail

if [[ $(id -g) != 0 ]]; then
    echo "ERROR: run the image with group 0 (you used uid $(id -u), gid $(id -g))" >&2
    exit 1
fi
umask 0002

max_tries=${CONNECTION_CHECK_MAX_COUNT:-20}
sleep_seconds=${CONNECTION_CHECK_SLEEP_TIME:-3}
if (( max_tries > 0 )); then
    for (( try = 1; ; try++ )); do
        if output=$(airflow db check 2>&1); then
            break
        fi
        if (( try >= max_tries )); then
            echo "ERROR: the metadata database did not answer after $max_tries tries; last output:" >&2
            echo "$output" >&2
            exit 1
        fi
        sleep "$sleep_seconds"
    done
fi

if [[ -n ${_AIRFLOW_DB_MIGRATE:-} ]]; then
    airflow db migrate
fi

case ${1:-} in
    bash | python) exec "$@" ;;
    airflow) shift ;;
esac
exec airflow "$@"
