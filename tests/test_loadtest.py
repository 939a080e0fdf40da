"""Load tests: Locust runs headless as a subprocess against real HTTP servers and gates on the SLOs.

The inference service is the real app on a real model; the slow, failing and saturating
services are tiny real HTTP servers started here, so the SLO gate is seen to fail for real.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from readmission import loadtest, schema
from readmission.config import Settings
from readmission.dataset import synthetic_dataset
from readmission.serving.auth import new_key
from tests.factories import register_model
from tests.servers import VENV_BIN, free_port, image_command, run_locally, start_inference_api

REPO = Path(__file__).resolve().parents[1]
LOCUST_DOCKERFILE = REPO / "locust" / "Dockerfile"
MAKE_LOADTEST = [str(VENV_BIN / "readmission"), "loadtest"]  # what `make loadtest` runs
pytestmark = pytest.mark.timeout(300)
LOADTEST_KEY, LOADTEST_KEY_ENTRY = new_key("loadtest")  # the service requires it, as in production


class StubService:
    """A tiny real HTTP server with the service's routes; /predict answers with `status` after `delay` seconds.

    With `one_at_a_time` it serves a single request at a time, so its latency grows with the load.
    """

    def __init__(self, status: int = 200, delay: float = 0.0, one_at_a_time: bool = False):
        self.status, self.delay = status, delay
        self.lock = threading.Lock() if one_at_a_time else None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # Locust hangs up mid-answer when it stops
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(200, {"status": "ok"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == loadtest.BATCH:
                    self._answer(200, {"predictions": [{"prediction": 0, "probability": 0.1}] * len(body)})
                elif service.lock:
                    with service.lock:
                        time.sleep(service.delay)
                        self._answer(service.status, {"prediction": 0, "probability": 0.1})
                else:
                    time.sleep(service.delay)
                    self._answer(service.status, {"prediction": 0, "probability": 0.1})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler

    def __enter__(self) -> "StubService":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def inference_api(tmp_path_factory) -> str:
    """The real inference service (its image's command, one worker) serving a small registered model, requiring
    LOADTEST_KEY; its URL."""
    folder = tmp_path_factory.mktemp("inference-api")
    settings = Settings(_env_file=None, data_dir=folder / "data")
    register_model(settings)
    server, url = start_inference_api({"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                                       "API_KEYS": LOADTEST_KEY_ENTRY}, folder)
    yield url
    server.stop()


def run_load_test(command: list[str], host: str, report_dir: Path, **settings: object) -> subprocess.CompletedProcess:
    """`command` run as a user runs it, with `settings` (LOADTEST_*, SLO_*) in its environment."""
    env = {**os.environ, "API_URL": host, "LOADTEST_REPORT_DIR": str(report_dir), "LOADTEST_POOL_ROWS": "300",
           "LOADTEST_BATCH_ROWS": "50", **{name.upper(): str(value) for name, value in settings.items()}}  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)


def locust_image_command(report_dir: Path) -> list[str]:
    """The locust image's command (`locust -f .../locustfile.py`) from this checkout, headless, with CSV and HTML."""
    image = run_locally(image_command(LOCUST_DOCKERFILE), LOCUST_DOCKERFILE, free_port())
    return [*image, "--headless", "--only-summary", "--csv", str(report_dir / "stats"),
            "--html", str(report_dir / "report.html")]  # fmt: skip


def summary_of(report_dir: Path) -> str:
    return (report_dir / loadtest.SUMMARY_FILE).read_text()


def verdict_line(summary: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith("- verdict:"))


# --- the request pool ---------------------------------------------------------------------


def test_the_pool_holds_varied_encounters_in_the_service_input_format(make_settings):
    pool = loadtest.encounter_pool(make_settings(loadtest_pool_rows=200))
    bodies = [json.loads(body) for body in pool]
    assert len(bodies) == 200
    assert all(set(body) == set(schema.FEATURE_INPUT_COLUMNS) for body in bodies)
    assert all(isinstance(body["time_in_hospital"], int) and isinstance(body["age"], str) for body in bodies)
    assert len({body["diag_1"] for body in bodies}) > 20  # realistic variety, not one fixed body


def test_the_pool_samples_a_csv_given_by_the_settings(make_settings, tmp_path):
    path = tmp_path / "encounters.csv"
    synthetic_dataset(rows=500, seed=3).to_csv(path, index=False)
    pool = loadtest.encounter_pool(make_settings(loadtest_dataset_path=str(path), loadtest_pool_rows=100))
    rows = synthetic_dataset(rows=500, seed=3).to_dict(orient="records")
    assert len(pool) == 100
    assert set(pool) <= {json.dumps(loadtest.request_body(row)).encode() for row in rows}


def test_a_batch_body_is_a_json_list_of_pool_encounters(make_settings):
    pool = loadtest.encounter_pool(make_settings(loadtest_pool_rows=50))
    batch = json.loads(loadtest.batch_body(pool, 300, random.Random(1)))
    assert len(batch) == 300 and all(json.dumps(row).encode() in pool for row in batch[:20])


# --- SLO arithmetic ---------------------------------------------------------------------


def test_each_broken_slo_is_named_with_its_measured_value():
    settings = Settings(_env_file=None, slo_max_failure_ratio=0.01, slo_p95_predict_ms=200)
    run = loadtest.Measurement(users=10, seconds=10, requests=1000, failures=50, predict_p95_ms=340)
    assert [str(b) for b in loadtest.slo_breaches(run, settings)] == [
        "failure ratio = 5.00% (limit 1.00%)",
        "p95 of POST /predict = 340 ms (limit 200 ms)",
    ]
    assert loadtest.slo_breaches(loadtest.Measurement(10, 10, 1000, 10, 200), settings) == []


def test_a_run_that_completed_no_request_does_not_pass():
    silent = loadtest.Measurement(users=10, seconds=10, requests=0, failures=0, predict_p95_ms=None)
    for shape in ("constant", "step"):
        assert [str(b) for b in loadtest.run_breaches(shape, silent, [], Settings(_env_file=None))] == [
            "requests completed = 0 (limit at least 1)"
        ]


def test_capacity_is_the_last_step_before_the_first_breaking_one():
    settings = Settings(_env_file=None)

    def step(users: int, p95: float) -> loadtest.Step:
        measurement = loadtest.Measurement(users, 10, 100, 0, p95)
        return loadtest.Step(measurement, loadtest.slo_breaches(measurement, settings))

    steps = [step(10, 50), step(20, 120), step(30, 250), step(40, 150)]
    assert loadtest.capacity(steps).users == 20
    assert loadtest.run_breaches("step", steps[0].measurement, steps, settings) == []
    assert loadtest.capacity(steps[2:]) is None
    assert [b.slo for b in loadtest.run_breaches("step", steps[0].measurement, steps[2:], settings)] == [
        "p95 of POST /predict"
    ]


# --- headless runs ----------------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.servers
def test_make_loadtest_against_the_inference_service_keeps_the_slos_and_reports(inference_api, tmp_path):
    result = run_load_test(MAKE_LOADTEST, inference_api, tmp_path, loadtest_users=30, loadtest_run_seconds=20,
                           loadtest_spawn_rate=30, loadtest_clinician_weight=8, loadtest_system_weight=1,
                           loadtest_monitor_weight=1, api_key=LOADTEST_KEY)  # fmt: skip
    summary = summary_of(tmp_path)
    assert result.returncode == 0, summary
    assert "**PASS**" in verdict_line(summary) and "highest user count that kept the SLOs: 30" in summary
    with (tmp_path / "stats_stats.csv").open() as stats:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(stats)}
    for endpoint in [("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/health"), ("GET", "/model")]:
        assert int(rows[endpoint]["Request Count"]) > 0, endpoint
    assert int(rows["", "Aggregated"]["Failure Count"]) == 0
    assert float(rows["POST", "/predict"]["95%"]) > 0
    predict = next(line for line in summary.splitlines() if line.startswith("| POST /predict |")).split("|")
    requests, failures, p95 = int(predict[2]), int(predict[3]), int(predict[6])
    assert requests >= int(rows["POST", "/predict"]["Request Count"]) and failures == 0 and 0 < p95 <= 200
    html = (tmp_path / "report.html").read_text()  # written at the end, like the summary; the CSV is a snapshot
    assert "/predict/batch" in html and f'"num_requests": {requests}' in html


def test_a_failing_endpoint_breaks_the_failure_ratio_slo(tmp_path):
    with StubService(status=500) as service:
        result = run_load_test(locust_image_command(tmp_path), service.url, tmp_path, loadtest_users=10,
                               loadtest_run_seconds=5, loadtest_think_seconds=0.1)  # fmt: skip
    assert result.returncode != 0, result.stderr[-3000:]
    verdict = verdict_line(summary_of(tmp_path))
    assert "FAIL" in verdict and "failure ratio" in verdict and "p95" not in verdict


def test_a_slow_endpoint_breaks_the_latency_slo(tmp_path):
    with StubService(delay=0.3) as service:
        result = run_load_test(locust_image_command(tmp_path), service.url, tmp_path, loadtest_users=10,
                               loadtest_run_seconds=5, loadtest_think_seconds=0.1)  # fmt: skip
    assert result.returncode != 0, result.stderr[-3000:]
    verdict = verdict_line(summary_of(tmp_path))
    assert "FAIL" in verdict and "p95 of POST /predict" in verdict and "failure ratio" not in verdict
    measured = int(re.search(r"p95 of POST /predict = (\d+) ms", verdict).group(1))
    assert measured >= 300


def test_the_step_shape_adds_users_until_an_slo_breaks_then_stops(tmp_path):
    with StubService(delay=0.02, one_at_a_time=True) as service:  # at most 50 requests/s
        result = run_load_test(locust_image_command(tmp_path), service.url, tmp_path, loadtest_shape="step",
                               loadtest_step_users=2, loadtest_step_seconds=2, loadtest_max_users=40,
                               loadtest_spawn_rate=20, loadtest_think_seconds=0.1, slo_p95_predict_ms=100)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]  # a capacity was found
    summary = summary_of(tmp_path)
    table = summary.split("## Steps")[1].splitlines()[4:]
    steps = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table]
    users = [int(s[0]) for s in steps]
    assert users == list(range(2, 2 * len(steps) + 1, 2)) and users[-1] < 40  # stopped long before 40 users
    assert all(s[-1] == "kept" for s in steps[:-1]) and "p95 of POST /predict" in steps[-1][-1]
    assert f"highest user count that kept the SLOs: {users[-2]};" in summary
