"""docker-compose.yaml run for real: the whole stack under podman-compose (tests/compose_stack.py), with
the test-only override tests/containers/compose.test.yaml (the images `make images` built, stand-ins
for the third-party images where no registry answers, ports the engine picks, test secrets, no
Grafana). Everything below goes through the containers only: Airflow's REST API triggers batch 1
(data API -> MySQL -> MLflow with its artifacts in the S3 container), the inference container serves
the promoted version, the UI container shows a prediction in headless Chromium, Prometheus scrapes
every target, Locust's image loads the inference container, and `down` then `up` keeps the data.

The data API serves the synthetic data set of the tests (the real one when DATASET_PATH is set).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3
import pytest
import requests

from readmission.config import Settings
from readmission.serving.api_models import EXAMPLE_ENCOUNTER, RISK_LABELS
from readmission.serving.auth import new_key
from tests.browser import PREDICT, PatientForm
from tests.compose_stack import ComposeStack
from tests.conftest import REAL_DATASET
from tests.engine import (
    IMAGE_TAG,
    LOCUST_SMOKE_ARGS,
    LOCUST_SMOKE_ENV,
    Container,
    RunOptions,
    container_engine,
    engine_run,
    image_exists,
)
from tests.servers import REPO_ROOT, AirflowAPI, wait_until

pytestmark = pytest.mark.servers

DAG_ID = "diabetes_pipeline"
BATCH_SIZE = 1_000
API_KEY, API_KEYS_ENTRY = new_key("compose-test")
# What `.env` holds in a deployment: every secret the compose file requires. URL-safe (they go into URLs).
SECRETS = {
    "MYSQL_ROOT_PASSWORD": "test-only-root",
    "MYSQL_PIPELINE_PASSWORD": "test-only-pipeline",
    "MYSQL_MLFLOW_PASSWORD": "test-only-mlflow",
    "MYSQL_MONITOR_PASSWORD": "test-only-monitor",
    "POSTGRES_AIRFLOW_PASSWORD": "test-only-postgres",
    "MINIO_ROOT_USER": "test-only-minio-admin",
    "MINIO_ROOT_PASSWORD": "test-only-minio-password",
    "AWS_ACCESS_KEY_ID": "test-only-app-key",
    "AWS_SECRET_ACCESS_KEY": "test-only-app-secret",
    "GRAFANA_ADMIN_PASSWORD": "test-only-grafana",
    "AIRFLOW_FERNET_KEY": "hmW7uvFqx0VQj1dU1sU9DyHbZ5W2kcCQjuzBWa1eRcs=",
    "AIRFLOW_JWT_SECRET": "test-only-jwt-secret",
    "AIRFLOW_API_SECRET_KEY": "test-only-api-secret",
    "AIRFLOW_ADMIN_PASSWORD": "test-only-admin",
    "RELOAD_TOKEN": "test-only-reload-token",
    "API_KEYS": API_KEYS_ENTRY,
    "API_KEY": API_KEY,
}
SETTINGS = Settings(_env_file=None)
PROJECT_IMAGES = ("airflow", "mlflow", "inference-api", "ui", "data-api", "locust")


def stack_environment(project: str, dataset: Path) -> dict[str, str]:
    """The environment podman-compose interpolates the files with: the machine's, less any setting a
    developer's shell may hold, plus the test's secrets, data set and names."""
    settings = {name.upper() for name in Settings.model_fields}
    environment = {name: value for name, value in os.environ.items() if name not in settings}
    environment.setdefault("CONTAINERS_CONF", str(REPO_ROOT / "containers.conf"))
    return (
        environment
        | SECRETS
        | {
            "IMAGE_TAG": IMAGE_TAG,
            "COMPOSE_TEST_NETWORK": project,
            "COMPOSE_TEST_DATASET": str(dataset),
            "DATASET_PATH": "/data/encounters.csv.gz",  # where the override mounts it
            "BATCH_SIZE": str(BATCH_SIZE),
            "BATCH_INTERVAL_SECONDS": "3600",  # batch 1 stays the current batch for the whole module
            "PIPELINE_SCHEDULE": "",  # the triggered run is the only run: no scheduled one starts on unpausing
        }
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, synthetic_csv):
    container_engine()
    for name in PROJECT_IMAGES:
        image = f"readmission-{name}:{IMAGE_TAG}"
        assert image_exists(image), f"{image} is missing: `make images` builds it"
    project = f"readmission-compose-{uuid.uuid4().hex[:8]}"
    dataset = Path(REAL_DATASET) if REAL_DATASET else synthetic_csv
    log_dir = tmp_path_factory.mktemp("compose")
    created = ComposeStack(project, stack_environment(project, dataset), log_dir)
    for service, definition in created.services.items():  # the official images, or their stand-ins
        assert image_exists(definition["image"]), f"{service}: {definition['image']} is missing (make stand-in-images)"
    created.start_healthchecks()
    try:
        created.ready_after = created.up()
        yield created
    finally:
        created.stop_healthchecks()
        try:
            created.down(volumes=True)
        finally:
            engine_run("network", "rm", "--force", created.network, check=False)


def mysql_rows(stack: ComposeStack, query: str) -> list[str]:
    """The rows of a query, run by the MySQL client inside the MySQL container."""
    result = stack.exec(
        "mysql",
        "mysql",
        "--user=root",
        f"--password={SECRETS['MYSQL_ROOT_PASSWORD']}",
        "--batch",
        "--skip-column-names",
        "--execute",
        query,
    )
    return result.stdout.splitlines()


def production_version(stack: ComposeStack) -> str:
    """The version the alias points at, asked of the MLflow container's REST API."""
    answer = requests.get(
        f"{stack.url('mlflow', 5000)}/api/2.0/mlflow/registered-models/alias",
        params={"name": SETTINGS.model_name, "alias": SETTINGS.model_alias},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()["model_version"]["version"]


def artifact_keys(stack: ComposeStack) -> list[str]:
    """The objects of MLflow's artifact bucket, listed through the S3 container's published port."""
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.url("minio", 9000),
        aws_access_key_id=SECRETS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SECRETS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_every_service_comes_up_healthy_and_the_one_shot_jobs_complete(stack):
    containers = stack.containers()
    assert set(containers) == set(stack.services), "a service has no container, or a container no service"
    assert "grafana" not in containers  # no package here (tests/containers/README.md)
    for service, definition in stack.services.items():
        if "healthcheck" in definition:
            assert stack.health(service) == "healthy", f"{service}: {stack.health(service)}\n{stack.logs(service)}"
        else:  # the one-shot jobs: the buckets, Airflow's migrations
            assert (containers[service]["State"], containers[service]["ExitCode"]) == ("exited", 0), service
    print(f"\nseconds until healthy or done: {dict(sorted(stack.ready_after.items(), key=lambda i: i[1]))}")


@pytest.fixture(scope="module")
def pipeline_run(stack) -> tuple[dict, dict[str, str]]:
    """Batch 1, triggered through the Airflow API server container as the UI's Trigger button does."""
    api = AirflowAPI(stack.url("airflow-api-server", 8080), "admin", SECRETS["AIRFLOW_ADMIN_PASSWORD"])
    # The DAG processor container parses the DAG first; new DAGs start paused.
    wait_until(lambda: api.request("GET", f"/dags/{DAG_ID}").ok, timeout=300, interval=5, what=f"{DAG_ID} to be parsed")
    api.unpause(DAG_ID)
    triggered = api.trigger(DAG_ID, {"batch": 1})
    assert triggered.status_code == 200, triggered.text
    run = api.wait_for_run(DAG_ID, triggered.json()["dag_run_id"], timeout=1500)
    return run, api.task_states(DAG_ID, run["dag_run_id"])


def test_airflow_carries_batch_1_from_the_data_api_through_mysql_to_the_registry(stack, pipeline_run):
    run, states = pipeline_run
    failed = {task: state for task, state in states.items() if state != "success"}
    assert run["state"] == "success" and not failed, (
        f"run {run['state']}, tasks not successful: {failed}\n{stack.logs('airflow-scheduler')}"
    )
    # The raw rows in the MySQL container, fetched from the data API container.
    assert mysql_rows(stack, "SELECT COUNT(*) FROM raw_data_db.diabetes_raw WHERE batch_number = 1") == [
        str(BATCH_SIZE)
    ]
    # The model in the MLflow container's registry, its artifacts in the S3 container.
    assert production_version(stack) == "1"
    keys = artifact_keys(stack)
    assert any(key.endswith("MLmodel") for key in keys), keys[:20]


@pytest.mark.usefixtures("pipeline_run")  # after batch 1 went through
def test_the_inference_container_serves_the_promoted_version_after_its_reload(stack):
    url, version = stack.url("inference-api", 8000), production_version(stack)
    wait_until(
        lambda: requests.get(f"{url}/ready", timeout=5).json().get("model_version") == version,
        timeout=180,
        interval=3,
        what=f"the inference API to serve version {version}",
    )
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert requests.get(f"{url}/model", timeout=10).status_code == 401  # API_KEYS is set: no key, no answer
    model = requests.get(f"{url}/model", headers=key, timeout=10)
    assert model.status_code == 200, model.text
    assert (model.json()["name"], model.json()["version"], model.json()["alias"]) == (
        SETTINGS.model_name,
        version,
        SETTINGS.model_alias,
    )
    answer = requests.post(f"{url}/predict", json=EXAMPLE_ENCOUNTER, headers=key, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == version


@pytest.mark.usefixtures("pipeline_run")  # after batch 1 went through
def test_the_ui_container_shows_a_prediction_of_the_inference_container(stack, browser):
    version = production_version(stack)
    browser.get(stack.url("streamlit", 8501))
    page = PatientForm(browser, timeout=90)
    page.wait.until(lambda _: PREDICT in page.text())
    page.predict()
    page.wait.until(lambda _: any(label in page.text() for label in RISK_LABELS.values()))
    assert f"version {version}" in page.text()
    assert "Traceback" not in page.text()


@pytest.mark.usefixtures("pipeline_run")  # after batch 1 went through
def test_prometheus_scrapes_every_target_and_the_inference_request_counter(stack):
    url = stack.url("prometheus", 9090)
    requests.get(f"{stack.url('inference-api', 8000)}/health", timeout=10)  # at least one request counted

    def every_target_up() -> bool:
        targets = requests.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        return jobs >= {"prometheus", "inference-api", "pushgateway", "airflow-statsd", "node"} and all(
            t["health"] == "up" for t in targets
        )

    wait_until(every_target_up, timeout=180, interval=5, what="every Prometheus target to be up")
    query = 'sum(readmission_http_requests_total{job="inference-api"})'

    def counted() -> list:
        return requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()["data"]["result"]

    wait_until(counted, timeout=120, interval=5, what=f"{query} to return data")
    assert float(counted()[0]["value"][1]) > 0
    # Airflow's StatsD metrics, through the statsd-exporter container and its mapping file.
    heartbeats = requests.get(f"{url}/api/v1/query", params={"query": "airflow_scheduler_heartbeat"}, timeout=10)
    assert heartbeats.json()["data"]["result"], "no StatsD metric of Airflow's scheduler reached Prometheus"


@pytest.mark.usefixtures("pipeline_run")  # after batch 1 went through
def test_the_locust_image_runs_headless_against_the_inference_container_and_exits_0(stack):
    options = RunOptions(
        user="10001:10001",
        read_only=True,
        tmpfs=["/app/reports", "/tmp"],
        drop_all_capabilities=True,
        no_new_privileges=True,
    )
    locust = Container(
        f"readmission-locust:{IMAGE_TAG}",
        options,
        stack.network,
        "locust",
        env={**LOCUST_SMOKE_ENV, "API_KEY": API_KEY},
        args=LOCUST_SMOKE_ARGS,
    )
    try:
        locust.start()
        code = locust.wait_exit(timeout=240)
        logs = locust.logs()
    finally:
        locust.remove()
    assert code == 0, f"locust exited with {code}\n{logs}"
    assert "/predict" in logs, f"no prediction request in Locust's statistics:\n{logs}"


@pytest.mark.usefixtures("pipeline_run")  # after batch 1 went through
def test_down_leaves_no_container_and_up_again_keeps_the_data(stack):
    version, artifacts = production_version(stack), artifact_keys(stack)
    rows = mysql_rows(stack, "SELECT COUNT(*) FROM raw_data_db.diabetes_raw")
    stack.down()
    assert stack.containers() == {}, "containers left behind by `down`"
    volumes = engine_run("volume", "ls", "--quiet", "--filter", f"label=io.podman.compose.project={stack.project}")
    assert f"{stack.project}_mysql-data" in volumes.stdout.split()
    # Up again: the stores and the service that reads the model from them.
    stack.up(["inference-api"])
    assert mysql_rows(stack, "SELECT COUNT(*) FROM raw_data_db.diabetes_raw") == rows
    assert production_version(stack) == version
    assert artifact_keys(stack) == artifacts
    url = stack.url("inference-api", 8000)
    wait_until(
        lambda: requests.get(f"{url}/ready", timeout=5).json().get("model_version") == version,
        timeout=180,
        interval=3,
        what=f"the inference API to load version {version} again",
    )
