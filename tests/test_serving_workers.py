"""The inference API in production shape: two worker processes, models from a real `mlflow server`.

The tests run in order on one deployment, started before MLflow is up: it waits for MLflow
and a model, adds up the metrics of both workers, picks up a promoted version at its poll
without a failed request, and when the MLflow server goes away the old model keeps serving
while the failed polls are counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from readmission.config import Settings
from readmission.serving.schemas import EXAMPLE_ENCOUNTER
from tests.factories import metric, register_model
from tests.servers import MlflowServer, start_inference_api, wait_until

pytestmark = pytest.mark.servers

WORKERS = 2
QUIET_SECONDS = 1.0  # no new count for this long: the last responses have been counted


@dataclass
class Deployment:
    url: str
    metrics_dir: Path  # its PROMETHEUS_MULTIPROC_DIR
    mlflow: MlflowServer
    registry: Settings  # a client of the MLflow server, to register models
    before_mlflow: dict[str, int]  # status of /health and /ready before the MLflow server was up


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Deployment:
    """The API (2 workers, polling every second, no reload token) started first, then MLflow and version 1."""
    root = tmp_path_factory.mktemp("serving-workers")
    mlflow = MlflowServer(root / "mlflow")  # its port is chosen; it is not started yet
    api, url = start_inference_api({"MLFLOW_TRACKING_URI": mlflow.url, "MODEL_POLL_SECONDS": "1", "RELOAD_TOKEN": "",
                                    "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics")},
                                   root, workers=WORKERS, wait_for_model=False)  # fmt: skip
    before = {path: requests.get(f"{url}{path}", timeout=10).status_code for path in ("/health", "/ready")}
    mlflow.start()
    registry = Settings(_env_file=None, data_dir=root / "client", mlflow_tracking_uri=mlflow.url)
    register_model(registry, seed=0)
    wait_until(lambda: workers_serving(url, "1") == WORKERS, timeout=300, what="both workers to load version 1")
    yield Deployment(url, root / "metrics", mlflow, registry, before)
    api.stop()
    mlflow.stop()


def workers_serving(url: str, version: str) -> int:
    """How many live workers serve `version`, by the per-process model gauge."""
    return int(metric(requests.get(f"{url}/metrics", timeout=10).text, "readmission_model_version_info", version=version))


def predictions_counted_by_each_worker(metrics_dir: Path) -> list[float]:
    """POST /predict 200s of each worker, read from its own sample file."""
    counts = []
    for path in sorted(metrics_dir.glob("counter_*.db")):
        counts.append(sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
                          if "readmission_http_requests_total" in key and '"/predict"' in key and '"200"' in key))  # fmt: skip
    return counts


def hammer(url: str, clients: int, stop: threading.Event, seen: set, failures: list) -> list[threading.Thread]:
    """`clients` threads posting /predict until `stop`, recording answered versions and failures."""

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{url}/predict", json=EXAMPLE_ENCOUNTER, timeout=30)
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    seen.add(response.json()["model_version"])
                else:
                    failures.append((response.status_code, response.text))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_the_api_answers_before_mlflow_is_up_and_loads_the_model_once_it_is(deployment):
    assert deployment.before_mlflow == {"/health": 200, "/ready": 503}
    assert requests.get(f"{deployment.url}/ready", timeout=10).json()["model_version"] == "1"
    text = requests.get(f"{deployment.url}/metrics", timeout=10).text
    assert metric(text, "readmission_model_reloads_total", outcome="failure", trigger="startup") >= WORKERS
    assert metric(text, "readmission_model_reloads_total", outcome="success", trigger="startup") == WORKERS


def test_reload_over_http_is_refused_when_no_token_is_configured(deployment):
    url = deployment.url
    response = requests.post(f"{url}/reload", headers={"Authorization": "Bearer anything"}, timeout=10)
    assert response.status_code == 403 and "RELOAD_TOKEN" in response.json()["detail"]


def test_metrics_add_up_the_requests_of_both_workers(deployment):
    url, metrics_dir = deployment.url, deployment.metrics_dir
    stop, seen, failures = threading.Event(), set(), []
    threads = hammer(url, 8, stop, seen, failures)
    try:
        wait_until(lambda: min(predictions_counted_by_each_worker(metrics_dir) or [0]) >= 20
                   and len(predictions_counted_by_each_worker(metrics_dir)) == WORKERS,
                   timeout=60, what="both workers to answer predictions")  # fmt: skip
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    # A worker counts a request once its response is on its way, after the client may have read it: the
    # counts are final once they stay the same for a while.
    reads = [predictions_counted_by_each_worker(metrics_dir)]

    def settled() -> bool:
        time.sleep(QUIET_SECONDS)
        reads.append(predictions_counted_by_each_worker(metrics_dir))
        return reads[-1] == reads[-2]

    wait_until(settled, timeout=20, interval=0, what="the workers' counts to settle")
    per_worker = reads[-1]
    # Whichever worker answers the scrape, it reports the sum over both.
    for _ in range(6):
        with requests.Session() as fresh_connection:
            text = fresh_connection.get(f"{url}/metrics", timeout=10).text
        assert metric(text, "readmission_http_requests_total", route="/predict", status="200") == sum(per_worker)
        assert metric(text, "readmission_predictions_total") >= sum(per_worker)
    assert len({line.split('pid="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("readmission_model_version_info")}) == WORKERS  # fmt: skip


def test_a_promoted_version_is_served_after_the_poll_without_failed_requests(deployment):
    url = deployment.url
    stop, seen, failures = threading.Event(), set(), []
    threads = hammer(url, 4, stop, seen, failures)
    try:
        second = register_model(deployment.registry, seed=1)  # registered and promoted to @production
        wait_until(lambda: workers_serving(url, second) == WORKERS, timeout=60, what="both workers to poll and swap")
        wait_until(lambda: second in seen, timeout=30, what="answers of the new version")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert seen == {"1", second}
    text = requests.get(f"{url}/metrics", timeout=10).text
    assert metric(text, "readmission_model_reloads_total", outcome="success", trigger="poll") == WORKERS


def test_with_mlflow_down_the_old_model_keeps_serving_and_the_failures_are_counted(deployment):
    url = deployment.url
    version = requests.get(f"{url}/ready", timeout=10).json()["model_version"]
    deployment.mlflow.stop()

    def failed_polls() -> float:
        text = requests.get(f"{url}/metrics", timeout=10).text
        return metric(text, "readmission_model_reloads_total", outcome="failure", trigger="poll")

    wait_until(lambda: failed_polls() >= 2 * WORKERS, timeout=60, what="failed polls to be counted")
    for _ in range(10):
        answer = requests.post(f"{url}/predict", json=EXAMPLE_ENCOUNTER, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == version
    assert requests.get(f"{url}/ready", timeout=10).json()["model_version"] == version
    assert requests.get(f"{url}/model", timeout=10).json()["version"] == version
