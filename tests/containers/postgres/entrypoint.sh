#!/bin/bash
# The stand-in's entrypoint, written to the contract of the official postgres image's:
#   - an empty PGDATA is initialised with POSTGRES_USER (default postgres) as superuser, password
#     POSTGRES_PASSWORD (required), password authentication over TCP from anywhere, and database
#     POSTGRES_DB (default: the user's name); a non-empty PGDATA is used as it is;
#   - any uid works: one without a passwd entry gets a fake one (nss_wrapper);
#   - `postgres ...` starts the server listening on every address; anything else runs as given.
set -euo pipefail

if [[ ${1:-} != postgres ]]; then exec "$@"; fi

if ! getent passwd "$(id -u)" >/dev/null; then
    export NSS_WRAPPER_PASSWD=/tmp/nss-passwd NSS_WRAPPER_GROUP=/tmp/nss-group
    echo "postgres:x:$(id -u):$(id -g):PostgreSQL:$PGDATA:/bin/false" >"$NSS_WRAPPER_PASSWD"
    echo "postgres:x:$(id -g):" >"$NSS_WRAPPER_GROUP"
    export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libnss_wrapper.so
fi

user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
if [[ ! -s $PGDATA/PG_VERSION ]]; then
    : "${POSTGRES_PASSWORD:?the database is uninitialised and POSTGRES_PASSWORD is not set}"
    mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
    initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [[ $database != postgres ]]; then
        pg_ctl --silent --wait --options="-c listen_addresses=''" start >/dev/null
        createdb --username="$user" "$database"
        pg_ctl --silent --wait --mode=fast stop >/dev/null
    fi
    echo "initialised $PGDATA: user $user, database $database"
fi
unset LD_PRELOAD
exec "$@" -c listen_addresses='*'
