#!/bin/sh
# Create the platform's buckets and the MinIO user the applications sign in with, allowed on
# those buckets only. Runs in the minio/mc image (a Kubernetes Job, a one-shot compose service);
# harmless to run again.
#
#   create-buckets.sh <bucket>...
#   env: MINIO_URL, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD (admin), AWS_ACCESS_KEY_ID,
#        AWS_SECRET_ACCESS_KEY (the applications' user)
set -eu
: "${MINIO_URL:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
[ "$#" -gt 0 ] || { echo "usage: create-buckets.sh <bucket>..." >&2; exit 2; }
export HOME="${TMPDIR:-/tmp}"  # mc keeps its configuration in ~/.mc; the root filesystem is read-only

attempts=0
until mc alias set platform "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
    attempts=$((attempts + 1))
    [ "$attempts" -lt 60 ] || { echo "create-buckets: MinIO at $MINIO_URL did not answer within 120 s" >&2; exit 1; }
    sleep 2
done

resources=""
for bucket in "$@"; do
    mc mb --ignore-existing "platform/$bucket"
    resources="$resources\"arn:aws:s3:::$bucket\", \"arn:aws:s3:::$bucket/*\", "
done

cat > "$HOME/readmission-app.json" <<JSON
{"Version": "2012-10-17",
 "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [${resources%, }]}]}
JSON
mc admin user add platform "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
mc admin policy create platform readmission-app "$HOME/readmission-app.json"
case "$(mc admin user info platform "$AWS_ACCESS_KEY_ID")" in
    *readmission-app*) ;;  # attached by an earlier run (the image has no grep)
    *) mc admin policy attach platform readmission-app --user "$AWS_ACCESS_KEY_ID" ;;
esac
echo "create-buckets: $* ready; user $AWS_ACCESS_KEY_ID may use them"
