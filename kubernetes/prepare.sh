#!/bin/sh
# Make the kustomize tree renderable with plain `kubectl kustomize` / `kubectl apply -k`:
#
#   kubernetes/prepare.sh [overlay...]      e.g. kubernetes/prepare.sh local
#
# 1. kustomize reads files only below a kustomization's folder, but prometheus.yml, the alert
#    rules and grafana/ live at the repository root (docker-compose.yaml mounts them from there).
#    Copy them into base/shared/ (git-ignored) and write base/shared/kustomization.yaml, the
#    component that turns them into ConfigMaps. Run it again after changing those files.
# 2. For each overlay named, write overlays/<overlay>/secrets.env (git-ignored) from its
#    secrets.env.example when it does not exist yet: every value `generate` becomes a random
#    URL-safe string (a Fernet key for *_FERNET_KEY); API_KEY becomes a new API key and
#    API_KEYS the entry `ui:<its SHA-256>` (API_KEY must come first); other values are copied.
#    An overlay with ui-auth.toml.example (prod: the UI's sign-in) gets ui-auth.toml the same way.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
shared="$here/base/shared"

for file in prometheus.yml prometheus/alert_rules.yml grafana/provisioning/datasources/datasource.yml \
            grafana/provisioning/dashboards/provider.yml; do
    [ -f "$root/$file" ] || { echo "prepare.sh: $file is missing at the repository root" >&2; exit 1; }
done
dashboards=$(cd "$root/grafana/dashboards" 2>/dev/null && ls -- *.json 2>/dev/null || true)
[ -n "$dashboards" ] || { echo "prepare.sh: no grafana/dashboards/*.json at the repository root" >&2; exit 1; }

rm -rf "$shared"
mkdir -p "$shared/dashboards"
cp "$root/prometheus.yml" "$root/prometheus/alert_rules.yml" "$shared/"
cp "$root/grafana/provisioning/datasources/datasource.yml" "$root/grafana/provisioning/dashboards/provider.yml" "$shared/"
for dashboard in $dashboards; do cp "$root/grafana/dashboards/$dashboard" "$shared/dashboards/"; done
{
    echo "# Written by kubernetes/prepare.sh from the repository's files: do not edit, run it again."
    echo "apiVersion: kustomize.config.k8s.io/v1alpha1"
    echo "kind: Component"
    echo "configMapGenerator:"
    echo "  - name: prometheus-config"
    echo "    files: [prometheus.yml]"
    echo "  - name: prometheus-rules"
    echo "    files: [alert_rules.yml]"
    echo "  - name: grafana-datasources"
    echo "    files: [datasource.yml]"
    echo "  - name: grafana-dashboard-provider"
    echo "    files: [provider.yml]"
    echo "  - name: grafana-dashboards"
    echo "    files:"
    for dashboard in $dashboards; do echo "      - dashboards/$dashboard"; done
} > "$shared/kustomization.yaml"
echo "prepare.sh: copied prometheus.yml, the alert rules and $(echo "$dashboards" | wc -w) dashboards into $shared"

api_key=""
random_value() {  # $1: the variable's name
    case "$1" in
        *FERNET_KEY) head -c 32 /dev/urandom | base64 | tr '+/' '-_' ;;
        API_KEY) echo "rk_$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')" ;;
        API_KEYS) echo "ui:$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)" ;;
        *) head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' ;;
    esac
}

for overlay in "$@"; do
    example="$here/overlays/$overlay/secrets.env.example"
    target="$here/overlays/$overlay/secrets.env"
    [ -f "$example" ] || { echo "prepare.sh: no overlay $overlay ($example is missing)" >&2; exit 1; }
    auth="$here/overlays/$overlay/ui-auth.toml"
    if [ -f "$auth.example" ] && [ ! -f "$auth" ]; then
        (umask 077; sed "s/= \"generate\"/= \"$(random_value COOKIE_SECRET)\"/" "$auth.example" > "$auth")
        echo "prepare.sh: wrote $auth: set the OpenID Connect provider's and the UI client's values in it"
    fi
    if [ -f "$target" ]; then
        echo "prepare.sh: $target exists, kept as it is"
        continue
    fi
    umask 077
    while IFS= read -r line; do
        case "$line" in
            API_KEY=generate) api_key="$(random_value API_KEY)"; echo "API_KEY=$api_key" ;;
            API_KEYS=generate)
                [ -n "$api_key" ] || { echo "prepare.sh: API_KEYS=generate needs API_KEY=generate above it" >&2; exit 1; }
                echo "API_KEYS=$(random_value API_KEYS)" ;;
            *=generate) name="${line%%=*}"; echo "$name=$(random_value "$name")" ;;
            *) echo "$line" ;;
        esac
    done < "$example" > "$target"
    echo "prepare.sh: wrote $target with random secrets"
done
