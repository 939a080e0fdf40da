#!/bin/bash
# The stand-in's entrypoint, written to the contract of the official mysql image's:
#   - arguments starting with `-` are options of mysqld (`command: ["--local-infile=ON"]`);
#   - on an empty data directory: MYSQL_ROOT_PASSWORD (required) for root@localhost and root@'%',
#     MYSQL_DATABASE created, MYSQL_USER/MYSQL_PASSWORD created with every right on it, then every
#     /docker-entrypoint-initdb.d/*.sql (fed to the client) and *.sh (run when executable, sourced
#     otherwise) once, against a server on the socket only; a data directory in use is kept as it is;
#   - started as root, the server runs as user mysql; as any other uid, as that uid.
set -euo pipefail

if [[ ${1:-} == -* ]]; then set -- mysqld "$@"; fi
if [[ ${1:-} != mysqld && ${1:-} != mariadbd ]]; then exec "$@"; fi
shift
datadir=/var/lib/mysql
run_as=()
if [[ $(id -u) == 0 ]]; then
    chown -R mysql:mysql "$datadir" /run/mysqld
    run_as=(--user=mysql)
fi

if [[ ! -d $datadir/mysql ]]; then
    : "${MYSQL_ROOT_PASSWORD:?the database is uninitialised and MYSQL_ROOT_PASSWORD is not set}"
    echo "initialising $datadir"
    mariadb-install-db "${run_as[@]}" --datadir="$datadir" --auth-root-authentication-method=normal \
        --skip-test-db >/dev/null
    mariadbd "${run_as[@]}" --datadir="$datadir" --skip-networking --socket=/run/mysqld/mysqld.sock &
    server=$!
    for _ in $(seq 60); do
        mariadb-admin --socket=/run/mysqld/mysqld.sock --user=root ping --silent 2>/dev/null && break
        sleep 1
    done
    sql() { mariadb --protocol=socket --socket=/run/mysqld/mysqld.sock --user=root "$@"; }
    sql <<SQL
DELETE FROM mysql.global_priv WHERE User = '';
ALTER USER 'root'@'localhost' IDENTIFIED BY '${MYSQL_ROOT_PASSWORD}';
CREATE USER 'root'@'%' IDENTIFIED BY '${MYSQL_ROOT_PASSWORD}';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
    sql() { mariadb --protocol=socket --socket=/run/mysqld/mysqld.sock --user=root --password="$MYSQL_ROOT_PASSWORD" "$@"; }
    if [[ -n ${MYSQL_DATABASE:-} ]]; then sql -e "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`"; fi
    if [[ -n ${MYSQL_USER:-} && -n ${MYSQL_PASSWORD:-} ]]; then
        sql -e "CREATE USER '$MYSQL_USER'@'%' IDENTIFIED BY '$MYSQL_PASSWORD'"
        if [[ -n ${MYSQL_DATABASE:-} ]]; then sql -e "GRANT ALL ON \`$MYSQL_DATABASE\`.* TO '$MYSQL_USER'@'%'"; fi
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case $file in
            *.sh)
                if [[ -x $file ]]; then echo "running $file"; "$file"; else echo "sourcing $file"; . "$file"; fi ;;
            *.sql) echo "running $file"; sql ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} <"$file" ;;
            *.sql.gz) echo "running $file"; gunzip -c "$file" | sql ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} ;;
            *) [[ -e $file ]] && echo "ignoring $file" ;;
        esac
    done
    kill "$server" && wait "$server" || true
    echo "initialised $datadir"
fi
exec mariadbd "${run_as[@]}" --datadir="$datadir" "$@"
