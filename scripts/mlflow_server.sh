#!/bin/sh
# The command of Dockerfile_mlflow (and of the tests, which start the server the same way):
# bring the backend store's schema up to date, then serve the tracking server and the registry
# with artifacts proxied to S3/MinIO. Configured by MLflow's own environment variables:
#   MLFLOW_BACKEND_STORE_URI      required, e.g. mysql+pymysql://mlflow:<password>@mysql:3306/mlflow_db
#   MLFLOW_ARTIFACTS_DESTINATION  required, e.g. s3://mlflow-artifacts
#   MLFLOW_S3_ENDPOINT_URL        MinIO's URL (read by MLflow's S3 client), with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
#   MLFLOW_SERVER_ALLOWED_HOSTS   required, the Host headers to accept, e.g. mlflow,mlflow:5000,localhost:*
#   MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS   default 0.0.0.0, 5000, 2
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. mysql+pymysql://mlflow:PASSWORD@mysql:3306/mlflow_db}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://mlflow-artifacts}"
: "${MLFLOW_SERVER_ALLOWED_HOSTS:?set MLFLOW_SERVER_ALLOWED_HOSTS, the Host headers clients use, e.g. mlflow,mlflow:5000}"

# Creates the tables on an empty database, migrates an older one, does nothing on a current one.
mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"

exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
    --allowed-hosts "$MLFLOW_SERVER_ALLOWED_HOSTS"
