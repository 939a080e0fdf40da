"""End to end: a real Prometheus, on a test copy of prometheus.yml, scrapes the inference service
(two workers) and a Pushgateway holding one pipeline run. Every query of every dashboard panel
must return data, and every alert rule must parse and evaluate without error.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import requests
import yaml

from readmission import monitoring
from readmission.config import Settings
from readmission.dataset import synthetic_dataset
from readmission.loadtest import request_body
from tests.factories import encounter_rows, pipeline_run_figures, register_model
from tests.servers import REPO_ROOT, PrometheusServer, Pushgateway, start_inference_api, wait_until

pytestmark = pytest.mark.servers

DASHBOARDS = sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = REPO_ROOT / "prometheus" / "alert_rules.yml"
# Grafana's macros, as Grafana would fill them in for a short time range and a 1 s scrape interval.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
# Jobs of prometheus.yml whose targets this test does not run: there is no Airflow here, and no
# dashboard panel or alert reads node-exporter's metrics (job `node`) by name.
NOT_RUN_HERE = {"airflow-statsd", "node"}
DRIFT_WINDOW = 200  # small: one batch request fills a worker's window


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every panel."""
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                queries.append((path.name, panel["title"], target["expr"]))
    return queries


def rule_expressions() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]  # fmt: skip


def promql(expr: str) -> str:
    """A dashboard query as Grafana sends it to Prometheus."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def config_for_test(addresses: dict[str, str]) -> dict:
    """prometheus.yml with each job's targets replaced by `addresses[job]`, a 1 s scrape interval and
    the repository's rule file; every other setting (honor_labels, paths) is the real file's."""
    config = yaml.safe_load((REPO_ROOT / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name in NOT_RUN_HERE:
            continue
        assert name in addresses, f"prometheus.yml scrapes job {name}: say where this test runs it"
        job = {key: value for key, value in job.items() if not key.endswith("_configs") or key == "relabel_configs"}
        jobs.append({**job, "static_configs": [{"targets": [addresses[name]]}]})
    config["scrape_configs"] = jobs
    return config


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A model with its training profile, the inference service on it (2 workers), a Pushgateway
    holding one run pushed by `monitoring.report_run`, and Prometheus scraping them."""
    from readmission import ingest
    from readmission.sources import Batch
    from readmission.storage import Storage

    folder = tmp_path_factory.mktemp("observability")
    stores = folder / "stores"  # MLflow's URI given: mlflow.set_tracking_uri exports it to the environment
    settings = Settings(_env_file=None, data_dir=stores, mlflow_tracking_uri=f"sqlite:///{stores / 'mlflow.db'}")
    version = register_model(settings)
    storage = Storage.from_settings(settings)
    storage.create_schema()
    ingest.ingest_batch(storage, Batch(1, 7, encounter_rows(500, seed=5)), "observability-test")
    storage.dispose()

    api, api_url = start_inference_api({"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                                        "DRIFT_WINDOW": str(DRIFT_WINDOW)}, folder, workers=2)  # fmt: skip
    pushgateway = Pushgateway(folder).start()
    prometheus = PrometheusServer(folder / "prometheus.yml", folder)
    try:
        report = monitoring.report_run(settings.model_copy(update={"pushgateway_url": pushgateway.url}),
                                       pipeline_run_figures(batch=1, scored_by=version))  # fmt: skip
        assert report["pushed"] and report["drift"], report
        addresses = {"prometheus": host_port(prometheus.url), "inference-api": host_port(api_url),
                     "pushgateway": host_port(pushgateway.url)}  # fmt: skip
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config_for_test(addresses)))
        prometheus.start()
        yield {"api": api_url, "prometheus": prometheus}
    finally:
        for server in (prometheus, pushgateway, api):
            server.stop()


def drive_traffic(api: str, rounds: int, pause: float) -> None:
    """Single predictions, batches (CSV and JSON) and a refused request, spread over several scrapes.
    Every encounter is a different one of the training data's population: the requests do not drift."""
    first = synthetic_dataset(DRIFT_WINDOW + 100, seed=21)
    rest = [request_body(row) for row in synthetic_dataset(rounds * 30, seed=22).to_dict("records")]
    ok = requests.post(f"{api}/predict/batch", data=first.to_csv(index=False), headers={"Content-Type": "text/csv"},
                       timeout=60)  # fmt: skip
    assert ok.status_code == 200, ok.text
    for turn in range(rounds):
        bodies = rest[turn * 30 : (turn + 1) * 30]
        for body in bodies[:5]:
            assert requests.post(f"{api}/predict", json=body, timeout=10).status_code == 200
        assert requests.post(f"{api}/predict/batch", json=bodies[5:], timeout=30).status_code == 200
        assert requests.post(f"{api}/predict", json={"age": "[70-80)"}, timeout=10).status_code == 422
        requests.get(f"{api}/model", timeout=10)
        time.sleep(pause)


def has_data(result: list[dict]) -> bool:
    """A query result a panel would draw: at least one series with a finite value."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def empty_panels(prometheus: PrometheusServer) -> list[str]:
    return [f"{dashboard} / {title}: {expr}" for dashboard, title, expr in panel_queries()
            if not has_data(prometheus.query(promql(expr)))]  # fmt: skip


@pytest.fixture(scope="module")
def scraped(stack):
    """Prometheus after scraping both workers' traffic several times (waits until every target is up)."""
    prometheus = stack["prometheus"]
    wait_until(lambda: {t["labels"]["job"] for t in prometheus.targets() if t["health"] == "up"}
               >= {"prometheus", "inference-api", "pushgateway"}, timeout=30, what="every target scraped")  # fmt: skip
    drive_traffic(stack["api"], rounds=8, pause=0.6)
    try:
        wait_until(lambda: not empty_panels(prometheus), timeout=20, interval=1, what="every panel to show data")
    except TimeoutError:
        pass  # the test below names the panels
    return prometheus


def test_every_dashboard_panel_shows_data(scraped):
    assert panel_queries() and not empty_panels(scraped), "\n".join(empty_panels(scraped))


def test_both_workers_report_cpu_and_memory(scraped):
    memory = scraped.query('process_resident_memory_bytes{job="inference-api"}')
    assert len({series["metric"]["pid"] for series in memory}) == 2
    assert all(float(series["value"][1]) > 10_000_000 for series in memory)


def test_every_alert_expression_parses_and_the_rules_evaluate_without_error(scraped):
    for alert, expr in rule_expressions():
        scraped.query(expr)  # ValueError with Prometheus' message when it does not parse
    groups = requests.get(f"{scraped.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {alert for alert, _ in rule_expressions()}
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in loaded.values() if rule["health"] != "ok"]
    assert not unhealthy, unhealthy


def test_a_healthy_stack_fires_no_inference_or_drift_alert(scraped):
    firing = {alert["metric"]["alertname"] for alert in scraped.query("ALERTS")}
    assert not firing & {"InferenceTargetDown", "InferenceHighErrorRatio", "InferenceNoModel", "ServingFeatureDrift",
                         "BatchFeatureDrift", "MonitoringTargetDown"}, firing  # fmt: skip


def test_dashboards_have_fixed_uids_and_no_datasource_inputs():
    uids = []
    for path in DASHBOARDS:
        text = path.read_text()
        assert "${DS_" not in text and "__inputs" not in text, path.name
        dashboard = json.loads(text)
        uids.append(dashboard["uid"])
        for panel in dashboard["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, (path.name, panel["title"])
    assert len(DASHBOARDS) == 3 and len(set(uids)) == 3 and all(re.fullmatch(r"[a-z-]+", uid) for uid in uids)
    datasource = yaml.safe_load(Path(REPO_ROOT / "grafana/provisioning/datasources/datasource.yml").read_text())
    assert [source["uid"] for source in datasource["datasources"]] == ["prometheus"]
