"""docker-compose.yaml: the whole stack on one host. No Docker engine runs here, so the file is checked
offline: it parses, what it builds and mounts exists, every server has a healthcheck that the services
depending on it wait for, and every variable it reads is a setting listed in `.env.example`."""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from readmission.config import Settings
from tests.servers import REPO_ROOT

pytestmark = pytest.mark.servers

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
LOCUST_COMPOSE_FILE = REPO_ROOT / "docker-compose-locust.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
SECRET_SETTINGS = {
    name.upper() for name, field in Settings.model_fields.items() if isinstance(field.default, SecretStr)
}
# ${NAME}, ${NAME:-default}, ${NAME:?error} ... and $NAME; `$$` is a literal dollar for the container's shell.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+]?)[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# The ports of ARCHITECTURE.md, published on 127.0.0.1.
PUBLISHED = {
    "mysql": [3306],
    "minio": [9000, 9001],
    "mlflow": [5000],
    "data-api": [5001],
    "airflow-api-server": [8080],
    "inference-api": [8000],
    "streamlit": [8501],
    "prometheus": [9090],
    "pushgateway": [9091],
    "grafana": [3000],
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def env_example_names() -> set[str]:
    return {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }


def interpolations(path: Path) -> list[tuple[str, str]]:
    """(variable, operator) of every interpolation in the file, comments left out."""
    found = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        for braced, operator, bare in INTERPOLATION.findall(line.replace("$$", "")):
            found.append((braced or bare, operator))
    return found


def pass_through(services: dict) -> set[str]:
    """Variables a service takes from `.env` or the shell by name (`NAME:` without a value)."""
    names = set()
    for service in services.values():
        environment = service.get("environment", {})
        if isinstance(environment, dict):
            names |= {name for name, value in environment.items() if value is None}
        else:
            names |= {entry for entry in environment if "=" not in entry}
    return names


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (`./...` sources)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (REPO_ROOT / source).resolve()
    return mounts


def host_path(service: dict, container_path: str) -> Path | None:
    """Where a path inside the container comes from on the host, through the deepest bind mount."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda item: -len(item[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return source / container_path[len(target) :].lstrip("/")
    return None


# --- the file --------------------------------------------------------------------------------------


def test_the_file_parses_and_runs_the_whole_stack(services):
    expected = {
        "mysql",
        "minio",
        "minio-init",
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-db-migrate",
        "data-api",
        "inference-api",
        "streamlit",
        "prometheus",
        "pushgateway",
        "statsd-exporter",
        "node-exporter",
        "grafana",
    }
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"


@pytest.mark.parametrize("compose_file", [COMPOSE_FILE, LOCUST_COMPOSE_FILE], ids=lambda p: p.name)
def test_every_build_context_and_dockerfile_exists(compose_file):
    for name, service in load(compose_file)["services"].items():
        if "build" in service:
            context = compose_file.parent / service["build"]["context"]
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile"


@pytest.mark.parametrize("compose_file", [COMPOSE_FILE, LOCUST_COMPOSE_FILE], ids=lambda p: p.name)
def test_every_service_with_a_port_has_a_healthcheck(compose_file):
    for name, service in load(compose_file)["services"].items():
        if service.get("ports") or service.get("expose"):
            assert service.get("healthcheck", {}).get("test"), f"{name} has a port but no healthcheck"


def test_services_start_once_what_they_depend_on_is_healthy_or_done(services):
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, condition in depends_on.items():
            assert dependency in services, f"{name} depends on an unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no healthcheck"
            else:  # a one-shot job: migrations, buckets
                assert condition["condition"] == "service_completed_successfully", f"{name} -> {dependency}"
                assert services[dependency].get("restart", "no") == "no", f"{dependency} must run once"


def test_the_stack_keeps_its_data_in_named_volumes(compose, services):
    declared = set(compose["volumes"])
    for name, path in [("mysql", "/var/lib/mysql"), ("minio", "/data"), ("prometheus", "/prometheus")]:
        sources = {v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == path}
        assert sources and sources <= declared, f"{name} keeps {path} outside a named volume"


def test_published_ports_are_the_architecture_ports_on_localhost_only(services):
    for name, ports in PUBLISHED.items():
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}" for port in ports], name
    for name, service in services.items():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), name


# --- variables --------------------------------------------------------------------------------------


def test_every_variable_it_reads_is_listed_in_env_example(services):
    used = {name for name, _ in interpolations(COMPOSE_FILE)} | pass_through(services)
    assert used, "the stack reads no setting at all"
    missing = sorted(used - env_example_names())
    assert not missing, f"docker-compose.yaml reads variables .env.example does not list: {missing}"


def test_secrets_are_required_never_defaulted():
    used = interpolations(COMPOSE_FILE)
    secrets = [(name, operator) for name, operator in used if name in SECRET_SETTINGS]
    assert secrets
    assert all(operator == ":?" for _, operator in secrets), f"a secret with a default or none required: {secrets}"


def test_the_interpolation_pattern_reads_every_form():
    line = "a: ${ONE} ${TWO:-x} ${THREE:?set it} $FOUR $$NOT_ME"
    found = INTERPOLATION.findall(line.replace("$$", ""))
    assert [(braced or bare, operator) for braced, operator, bare in found] == [
        ("ONE", ""),
        ("TWO", ":-"),
        ("THREE", ":?"),
        ("FOUR", ""),
    ]


# --- the files it mounts, shared with kubernetes/ and the observability configuration ---------------


def test_every_mounted_file_exists(services):
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name} mounts {source} at {target}: it does not exist"


def test_the_mysql_init_script_is_run_not_sourced(services):
    # The image sources non-executable *.sh scripts into its own shell; ours must run in a shell of its own.
    script = host_path(services["mysql"], "/docker-entrypoint-initdb.d/init-databases.sh")
    assert script is not None and os.access(script, os.X_OK)


def test_prometheus_finds_its_rules_and_scrapes_services_of_the_stack(services):
    prometheus = services["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    config = yaml.safe_load(host_path(prometheus, config_file).read_text())
    for pattern in config.get("rule_files", []):
        rules = host_path(prometheus, posixpath.join(posixpath.dirname(config_file), pattern))
        assert rules is not None and list(rules.parent.glob(rules.name)), f"{pattern} is not mounted"
    names = {
        alias
        for service in services.values()
        for network in (service.get("networks") or {}).values()
        if network
        for alias in network.get("aliases", [])
    } | set(services)
    for job in config["scrape_configs"]:
        hosts = [t.rpartition(":")[0] for s in job.get("static_configs", []) for t in s["targets"]]
        hosts += [name for dns in job.get("dns_sd_configs", []) for name in dns["names"]]
        for host in hosts:
            assert host in names | {"localhost", "127.0.0.1"}, f"prometheus.yml scrapes {host}: no such service"


def test_node_exporter_reads_the_host_read_only_and_is_not_published(services):
    node = services["node-exporter"]
    mounts = {}  # container path -> (host path, options)
    for volume in node["volumes"]:
        source, target, options = volume.split(":")
        mounts[target] = (source, options.split(","))
    assert all("ro" in options for _, options in mounts.values()), "node-exporter mounts the host read-write"
    flags = dict(argument.split("=", 1) for argument in node["command"] if "=" in argument)
    paths = {flag: mounts[flags[flag]][0] for flag in ("--path.procfs", "--path.sysfs", "--path.rootfs")}
    assert paths == {"--path.procfs": "/proc", "--path.sysfs": "/sys", "--path.rootfs": "/"}
    assert node["read_only"] is True and node["cap_drop"] == ["ALL"]
    assert "ports" not in node and "network_mode" not in node  # on the stack's network: Prometheus finds it by name
    assert "--no-collector.netdev" in node["command"]  # it would report the container's interface as the host's


def test_grafana_is_provisioned_from_the_repository(services):
    grafana = services["grafana"]
    datasources = host_path(grafana, "/etc/grafana/provisioning/datasources")
    for source_file in datasources.glob("*.y*ml"):
        for source in yaml.safe_load(source_file.read_text())["datasources"]:
            assert re.match(r"https?://([^:/]+)", source["url"]).group(1) in services, source["url"]
    providers = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    for provider_file in providers.glob("*.y*ml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            dashboards = host_path(grafana, provider["options"]["path"])
            assert dashboards is not None and fnmatch.filter(os.listdir(dashboards), "*.json"), provider


def test_images_built_here_are_tagged_for_the_local_kubernetes_overlay(services):
    overlay = load(REPO_ROOT / "kubernetes" / "overlays" / "local" / "kustomization.yaml")
    local_tags = {image["name"]: image["newTag"] for image in overlay["images"]}
    built = {s["image"].split(":")[0]: s["image"].split(":")[1] for s in services.values() if "build" in s}
    assert built == local_tags


def test_the_load_test_stack_joins_this_network_and_finds_the_api(compose, services):
    locust = load(LOCUST_COMPOSE_FILE)
    assert locust["networks"]["readmission"] == {"name": compose["networks"]["default"]["name"], "external": True}
    for service in locust["services"].values():
        url = service["environment"]["API_URL"]
        host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
        assert host in services and int(port) in PUBLISHED[host], url


def test_the_clients_of_the_inference_api_present_their_own_api_key(services):
    # The API refuses /predict and /model without a key listed in API_KEYS, as on Kubernetes.
    assert services["inference-api"]["environment"]["API_KEYS"].startswith("${API_KEYS:?")
    assert services["streamlit"]["environment"]["API_KEY"].startswith("${API_KEY:?")
    for name, service in load(LOCUST_COMPOSE_FILE)["services"].items():
        assert "API_KEY" in service["environment"], f"{name} sends no API key"


def test_mysql_takes_the_local_files_ingestion_sends(services):
    # MySQL 8's default is OFF, and ingestion would fall back to INSERTs.
    assert "--local-infile=ON" in services["mysql"]["command"]
