#!/bin/bash
# cloud-init user data of the EC2 data API instance (Amazon Linux 2023, or Ubuntu/Debian).
#
# Runs once, at the instance's first boot: installs Docker with the compose plugin, checks out
# this repository, and installs the systemd unit `diabetes-data-api` that, at every boot,
# downloads the data set onto the instance's disk if it is not there yet and starts ec2_api
# with its compose file (restarting it whenever it exits).
#
# Fill in REPO_URL before launching (nothing here names a host, an account or an instance):
#   aws ec2 run-instances ... --user-data "$(sed 's|^REPO_URL=.*|REPO_URL=https://github.com/you/repo.git|' aws/ec2/user-data.sh)"
set -euo pipefail
exec > >(tee -a /var/log/diabetes-user-data.log) 2>&1

REPO_URL=""        # git URL of this repository (required)
REPO_REF="main"    # branch or tag to run
DATASET_URL="https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
DATASET_FILE=""    # the file name on disk; default: the last part of DATASET_URL
BASE_DIR="/opt/diabetes"
DATA_API_PORT="5001"
BATCH_SIZE="15000"
BATCH_INTERVAL_SECONDS="300"
# The data API's admin token (POST /restart) comes from SSM Parameter Store (a SecureString read with
# the instance role's ssm:GetParameter), never from this file; empty: restarting over HTTP is disabled.
ADMIN_TOKEN_PARAMETER=""   # e.g. /diabetes/data-api/admin-token
COMPOSE_VERSION="v2.29.7"   # Amazon Linux has no compose/buildx packages: pinned release binaries
BUILDX_VERSION="v0.17.1"

if [[ -z "$REPO_URL" ]]; then
    echo "user-data: REPO_URL is empty; set it to this repository's git URL" >&2
    exit 1
fi
DATASET_FILE="${DATASET_FILE:-$(basename "${DATASET_URL%%\?*}")}"
APP_DIR="$BASE_DIR/app"
DATA_DIR="$BASE_DIR/data"

install_docker_amazon_linux() {
    dnf install -y docker git
    local arch plugins=/usr/local/lib/docker/cli-plugins
    arch="$(uname -m)"
    mkdir -p "$plugins"
    curl -fsSL --retry 5 -o "$plugins/docker-compose" \
        "https://github.com/docker/compose/releases/download/$COMPOSE_VERSION/docker-compose-linux-$arch"
    case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
    curl -fsSL --retry 5 -o "$plugins/docker-buildx" \
        "https://github.com/docker/buildx/releases/download/$BUILDX_VERSION/buildx-$BUILDX_VERSION.linux-$arch"
    chmod 0755 "$plugins/docker-compose" "$plugins/docker-buildx"
}

install_docker_debian() {
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q ca-certificates curl git
    curl -fsSL --retry 5 https://get.docker.com | sh   # Docker CE with the compose and buildx plugins
}

if command -v dnf >/dev/null; then install_docker_amazon_linux; else install_docker_debian; fi
systemctl enable --now docker

# The code: a checkout of REPO_REF (updated in place if this script runs again).
if [[ -d "$APP_DIR/.git" ]]; then
    git -C "$APP_DIR" fetch --depth 1 origin "$REPO_REF"
    git -C "$APP_DIR" checkout --force FETCH_HEAD
else
    git clone --depth 1 --branch "$REPO_REF" "$REPO_URL" "$APP_DIR"
fi

DATA_API_ADMIN_TOKEN=""
if [[ -n "$ADMIN_TOKEN_PARAMETER" ]]; then
    DATA_API_ADMIN_TOKEN="$(aws ssm get-parameter --with-decryption --name "$ADMIN_TOKEN_PARAMETER" \
        --query Parameter.Value --output text)"
fi

# The data set lives on the instance's EBS disk, so it survives the nightly stop.
install -d -m 0755 "$DATA_DIR"
install -m 0600 /dev/null /etc/default/diabetes-data-api   # it holds the admin token: root only
cat > /etc/default/diabetes-data-api <<ENV
DATASET_URL=$DATASET_URL
DATASET_DIR=$DATA_DIR
DATASET_FILE=$DATASET_FILE
DATA_API_PORT=$DATA_API_PORT
BATCH_SIZE=$BATCH_SIZE
BATCH_INTERVAL_SECONDS=$BATCH_INTERVAL_SECONDS
DATA_API_ADMIN_TOKEN=$DATA_API_ADMIN_TOKEN
ENV

install -m 0644 "$APP_DIR/aws/ec2/diabetes-data-api.service" /etc/systemd/system/diabetes-data-api.service
systemctl daemon-reload
systemctl enable --now diabetes-data-api
echo "user-data: diabetes-data-api enabled; follow it with: journalctl -u diabetes-data-api -f"
