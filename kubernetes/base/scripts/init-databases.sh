#!/bin/sh
# Create the platform's databases and one least-privilege user per consumer. The mysql image
# runs it once, when its data directory is empty (/docker-entrypoint-initdb.d); it is harmless
# to run again: existing databases are kept and the users' passwords and grants are reset.
#
#   pipeline  the Airflow tasks: rows and tables of raw_data_db and clean_data_db, no other database
#   mlflow    the MLflow server: everything in mlflow_db (its migrations alter tables)
#   monitor   the UI's Monitoring page: reads raw_data_db and clean_data_db, writes nothing
#
# Airflow's metadata lives in PostgreSQL (postgres.yaml, the compose service `postgres`), not here.
#
# Passwords come from the environment; they end up inside database URLs, so they must be URL-safe.
set -eu

for name in MYSQL_ROOT_PASSWORD MYSQL_PIPELINE_PASSWORD MYSQL_MLFLOW_PASSWORD MYSQL_MONITOR_PASSWORD; do
    eval "value=\${$name:-}"
    case "$value" in
        "") echo "init-databases: $name is not set" >&2; exit 1 ;;
        *[!A-Za-z0-9._~-]*) echo "init-databases: $name may hold only letters, digits and . _ ~ - (it goes into URLs)" >&2; exit 1 ;;
    esac
done

mysql --protocol=socket --user=root --password="$MYSQL_ROOT_PASSWORD" <<SQL
CREATE DATABASE IF NOT EXISTS raw_data_db CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS clean_data_db CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS mlflow_db CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE USER IF NOT EXISTS 'pipeline'@'%' IDENTIFIED BY '$MYSQL_PIPELINE_PASSWORD';
CREATE USER IF NOT EXISTS 'mlflow'@'%' IDENTIFIED BY '$MYSQL_MLFLOW_PASSWORD';
CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY '$MYSQL_MONITOR_PASSWORD';
ALTER USER 'pipeline'@'%' IDENTIFIED BY '$MYSQL_PIPELINE_PASSWORD';
ALTER USER 'mlflow'@'%' IDENTIFIED BY '$MYSQL_MLFLOW_PASSWORD';
ALTER USER 'monitor'@'%' IDENTIFIED BY '$MYSQL_MONITOR_PASSWORD';

-- The pipeline writes rows and creates its tables, indexes and views (CREATE OR REPLACE VIEW
-- needs DROP); it cannot grant, touch other databases or administer the server.
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, ALTER, CREATE VIEW, SHOW VIEW, DROP ON raw_data_db.* TO 'pipeline'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, ALTER, CREATE VIEW, SHOW VIEW, DROP ON clean_data_db.* TO 'pipeline'@'%';
GRANT ALL PRIVILEGES ON mlflow_db.* TO 'mlflow'@'%';
-- The Monitoring page reads the batch log, the predictions and the drift's batches.
GRANT SELECT ON raw_data_db.* TO 'monitor'@'%';
GRANT SELECT ON clean_data_db.* TO 'monitor'@'%';
FLUSH PRIVILEGES;
SQL
echo "init-databases: raw_data_db, clean_data_db, mlflow_db and their users are ready"
