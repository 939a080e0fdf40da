"""The images, built by `make images` and run for real by the container engine (podman here): each
service image, started as the rendered Kubernetes manifests start it (their numeric user, read-only
root filesystem with a tmpfs where the pod mounts an emptyDir, no capabilities, no privilege
escalation), passes its own HEALTHCHECK; across containers, MLflow keeps a registered model, the
inference API serves it, the UI shows its prediction in headless Chromium, the Locust image's
headless run against it exits 0, and Airflow's four roles run on PostgreSQL.

The manifests are read, not repeated: change a securityContext or an emptyDir there and these
tests start the containers that way. No cluster runs here; what is only validated offline is in
tests/test_deploy_kubernetes.py.
"""

from __future__ import annotations

import pytest
import requests

from readmission.config import Settings
from readmission.serving.api_models import EXAMPLE_ENCOUNTER, RISK_LABELS
from tests.browser import PREDICT, PatientForm
from tests.engine import (
    IMAGE_TAG,
    LOCUST_SMOKE_ARGS,
    LOCUST_SMOKE_ENV,
    Container,
    Network,
    RunOptions,
    container_engine,
    engine_run,
    image_exists,
    pod_run_options,
)
from tests.factories import register_model
from tests.test_deploy_kubernetes import render, tree  # noqa: F401 - `tree` is a fixture used below

pytestmark = pytest.mark.servers

IMAGES = ("airflow", "mlflow", "inference-api", "ui", "data-api", "locust")
SERVICE_IMAGES = {
    "mlflow": "Dockerfile_mlflow",
    "inference-api": "fastapi/Dockerfile",
    "ui": "streamlit/Dockerfile",
    "data-api": "ec2_api/Dockerfile",
}
RELOAD_TOKEN = "test-only-reload-token"
MODEL_NAME = "container-test-model"
START_SECONDS = 240  # a service's first start on a busy 2-core machine


def image(name: str) -> str:
    return f"readmission-{name}:{IMAGE_TAG}"


@pytest.fixture(scope="module")
def manifests(tree) -> dict[str, dict]:  # noqa: F811 - the fixture imported above
    """The local overlay's workloads by name, as `kubectl kustomize` renders them."""
    objects = render(tree / "kubernetes" / "overlays" / "local")
    return {o["metadata"]["name"]: o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")}


@pytest.fixture(scope="module")
def network():
    container_engine()
    for name in IMAGES:
        assert image_exists(image(name)), f"{image(name)} is missing: `make images` builds it"
    with Network() as created:
        yield created.name


@pytest.fixture(scope="module")
def started():
    """Every container the module starts, removed at its end."""
    containers: list[Container] = []
    yield containers
    for container in containers:
        container.remove()


@pytest.fixture(scope="module")
def mlflow(manifests, network, started) -> Container:
    """The MLflow image as the Deployment `mlflow` runs it; its backend store and artifacts on its /tmp emptyDir."""
    container = Container(
        image("mlflow"),
        pod_run_options(manifests["mlflow"], "mlflow"),
        network,
        "mlflow",
        port=5000,
        env={"MLFLOW_BACKEND_STORE_URI": "sqlite:////tmp/mlflow.db", "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/artifacts"},
    )
    started.append(container)
    return container.start().wait_healthy(START_SECONDS)


@pytest.fixture(scope="module")
def registered_version(mlflow, tmp_path_factory) -> str:
    """A model trained here, registered and promoted through the MLflow container's published port."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("registry"),
        mlflow_tracking_uri=mlflow.url,
        model_name=MODEL_NAME,
    )
    return register_model(settings)


@pytest.fixture(scope="module")
def inference_api(manifests, network, started, registered_version) -> Container:
    """The inference image as the Deployment `inference-api` runs it, reading the model from the MLflow container."""
    container = Container(
        image("inference-api"),
        pod_run_options(manifests["inference-api"]),
        network,
        "inference-api",
        port=8000,
        env={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MODEL_NAME": MODEL_NAME, "RELOAD_TOKEN": RELOAD_TOKEN},
    )
    started.append(container)
    container.start().wait_healthy(START_SECONDS)
    return container.wait_until(
        lambda: requests.get(f"{container.url}/ready", timeout=5).ok, START_SECONDS, "the model to load (/ready)"
    )


def assert_runs_as_declared(container: Container) -> None:
    """The process has the manifest's uid and gid and no capability; the root filesystem refuses writes
    where the manifest makes it read-only, and every emptyDir path takes them."""
    options = container.options
    ids = container.exec("sh", "-c", "echo $(id -u):$(id -g)")
    assert ids.stdout.strip() == options.user, ids
    status = container.exec("cat", "/proc/1/status").stdout
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    assert int(effective, 16) == 0 or not options.drop_all_capabilities, f"capabilities left: {effective}"
    if options.read_only:
        written = container.exec("sh", "-c", "echo x > /probe-root-is-read-only")
        assert written.returncode != 0 and "Read-only file system" in written.stderr, written
    for path in options.tmpfs:
        assert container.exec("sh", "-c", f"echo x > {path}/probe-writable").returncode == 0, f"{path} is not writable"
    logs = container.logs()
    assert "Read-only file system" not in logs, f"the service writes outside its emptyDirs:\n{logs}"


# --- the images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_every_image_is_built_with_a_numeric_non_root_user(name):
    container_engine()
    assert image_exists(image(name)), f"{image(name)} is missing: `make images` builds it"
    user = engine_run("image", "inspect", "--format", "{{.Config.User}}", image(name)).stdout.strip()
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, f"{image(name)} runs as {user!r}"


@pytest.mark.parametrize("name", sorted(SERVICE_IMAGES))
def test_every_service_image_keeps_its_healthcheck(name):
    # podman's default OCI format drops HEALTHCHECK: `make images` builds in docker format.
    healthcheck = engine_run("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image(name)).stdout
    assert "CMD" in healthcheck and "127.0.0.1" in healthcheck, f"{image(name)} lost its HEALTHCHECK: {healthcheck}"


# --- each service as its manifest runs it -------------------------------------------------------------------


def test_mlflow_runs_as_its_manifest_says_and_passes_its_healthcheck(mlflow):
    assert mlflow.passes_healthcheck()
    assert_runs_as_declared(mlflow)


def test_the_inference_api_serves_the_model_from_the_mlflow_container(inference_api, registered_version):
    assert inference_api.passes_healthcheck()
    assert_runs_as_declared(inference_api)
    ready = requests.get(f"{inference_api.url}/ready", timeout=5).json()
    assert (ready["model_name"], ready["model_version"]) == (MODEL_NAME, registered_version)
    answer = requests.post(f"{inference_api.url}/predict", json=EXAMPLE_ENCOUNTER, timeout=30)
    assert answer.status_code == 200, answer.text
    assert 0.0 <= answer.json()["probability"] <= 1.0
    assert answer.json()["model_version"] == registered_version
    # Its request counter, from every worker (PROMETHEUS_MULTIPROC_DIR on the manifest's emptyDir).
    metrics = requests.get(f"{inference_api.url}/metrics", timeout=5).text
    assert 'path="/predict"' in metrics or "/predict" in metrics


def test_the_ui_runs_as_its_manifest_says_and_shows_a_prediction_of_the_inference_container(
    manifests,
    network,
    started,
    inference_api,
    registered_version,
    browser,  # noqa: F811 - the fixture imported above
):
    container = Container(
        image("ui"),
        pod_run_options(manifests["streamlit"]),
        network,
        "streamlit",
        port=8501,
        env={"API_URL": "http://inference-api:8000", "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
    )
    started.append(container)
    container.start().wait_healthy(START_SECONDS)
    assert_runs_as_declared(container)
    # A clinician's first prediction in headless Chromium, answered by the inference container.
    browser.get(container.url)
    page = PatientForm(browser, timeout=90)
    page.wait.until(lambda _: PREDICT in page.text())
    page.predict()
    page.wait.until(lambda _: any(label in page.text() for label in RISK_LABELS.values()))
    assert f"version {registered_version}" in page.text()
    assert "Traceback" not in page.text()


def test_the_data_api_runs_as_its_manifest_says_and_serves_a_batch(manifests, network, started, synthetic_csv):
    container = Container(
        image("data-api"),
        pod_run_options(manifests["data-api"]),
        network,
        "data-api",
        port=5001,
        env={"DATASET_PATH": "/data/encounters.csv", "BATCH_SIZE": "500"},
        volumes=[f"{synthetic_csv}:/data/encounters.csv:ro"],
    )
    started.append(container)
    container.start().wait_healthy(START_SECONDS)
    assert_runs_as_declared(container)
    batch = requests.get(f"{container.url}/get_data", timeout=30)
    assert batch.status_code == 200, batch.text[:500]
    assert "encounter_id" in batch.text


def test_the_locust_image_runs_headless_against_the_inference_container_and_exits_0(network, started, inference_api):
    # No manifest runs Locust (docker-compose-locust.yaml does): the same hardening, its report folder writable.
    options = RunOptions(
        user="10001:10001",
        read_only=True,
        tmpfs=["/app/reports", "/tmp"],
        drop_all_capabilities=True,
        no_new_privileges=True,
    )
    container = Container(
        image("locust"),
        options,
        network,
        "locust",
        env=LOCUST_SMOKE_ENV,
        args=LOCUST_SMOKE_ARGS,
    )
    started.append(container)
    container.start()
    code = container.wait_exit(timeout=180)
    logs = container.logs()
    assert code == 0, f"locust exited with {code}\n{logs}"
    assert "/predict" in logs, f"no prediction request in Locust's statistics:\n{logs}"


# --- Airflow on PostgreSQL, as the manifests run them ---------------------------------------------------

POSTGRES_PASSWORD = "test-only-postgres-password"
# Keys every Airflow component must share (the Secret's, in the cluster); the Fernet key is a valid one.
AIRFLOW_SECRETS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://airflow:{POSTGRES_PASSWORD}@postgres:5432/airflow",
    "AIRFLOW__CORE__FERNET_KEY": "hmW7uvFqx0VQj1dU1sU9DyHbZ5W2kcCQjuzBWa1eRcs=",
    "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-jwt-secret",
    "AIRFLOW__API__SECRET_KEY": "test-only-api-secret",
    "AIRFLOW_ADMIN_PASSWORD": "test-only-admin-password",
}


def postgres_image(manifests: dict[str, dict]) -> str:
    (container,) = manifests["postgres"]["spec"]["template"]["spec"]["containers"]
    return container["image"]


@pytest.fixture(scope="module")
def postgres(manifests, network, started) -> Container:
    """PostgreSQL (the stand-in where no registry answers) as the StatefulSet `postgres` runs it."""
    container = Container(
        postgres_image(manifests),
        pod_run_options(manifests["postgres"]),
        network,
        "postgres",
        env={"POSTGRES_PASSWORD": POSTGRES_PASSWORD},
    )
    started.append(container)
    container.start()
    ready = ["pg_isready", "--host=127.0.0.1", "--username=airflow", "--dbname=airflow"]
    return container.wait_until(lambda: container.exec(*ready).returncode == 0, START_SECONDS, "pg_isready")


@pytest.fixture(scope="module")
def migrated(manifests, network, started, postgres) -> None:
    """The Job `airflow-db-migrate`, run to completion."""
    job = Container(
        image("airflow"),
        pod_run_options(manifests["airflow-db-migrate"]),
        network,
        "airflow-db-migrate",
        env=AIRFLOW_SECRETS,
    )
    started.append(job)
    job.start()
    code = job.wait_exit(timeout=600)
    assert code == 0, f"`airflow db migrate` exited with {code}\n{job.logs()}"


def test_the_airflow_migration_job_runs_as_its_manifest_says(manifests):
    options = pod_run_options(manifests["airflow-db-migrate"])
    assert options.user == "50000:0" and options.read_only and options.drop_all_capabilities
    assert options.args == ["db", "migrate"]


def container_port(spec: dict, port: int | str) -> int:
    """The number of a container's port, named or not."""
    return next(p["containerPort"] for p in spec.get("ports", []) if port in (p.get("name"), p["containerPort"]))


def probe_passes(container: Container, spec: dict) -> bool:
    """Whether the container's liveness probe, as the manifest declares it, succeeds now."""
    probe = spec["livenessProbe"]
    if "httpGet" in probe:
        return requests.get(f"{container.url}{probe['httpGet']['path']}", timeout=10).ok
    return container.exec(*probe["exec"]["command"]).returncode == 0


@pytest.mark.parametrize(
    "role", ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
)
def test_each_airflow_role_runs_as_its_manifest_says_and_passes_its_probe(manifests, network, started, migrated, role):
    workload = manifests[role]
    (spec,) = workload["spec"]["template"]["spec"]["containers"]
    probe = spec["livenessProbe"].get("httpGet")
    port = container_port(spec, probe["port"]) if probe else None
    container = Container(image("airflow"), pod_run_options(workload), network, role, port=port, env=AIRFLOW_SECRETS)
    started.append(container)
    container.start()
    container.wait_until(lambda: probe_passes(container, spec), 600, f"the liveness probe of {role}")
    assert_runs_as_declared(container)
    if role == "airflow-api-server":
        health = requests.get(f"{container.url}/api/v2/monitor/health", timeout=10).json()
        assert health["metadatabase"]["status"] == "healthy", health
        login = {"username": "admin", "password": AIRFLOW_SECRETS["AIRFLOW_ADMIN_PASSWORD"]}
        token = requests.post(f"{container.url}/auth/token", json=login, timeout=30)
        assert token.status_code in (200, 201), token.text
