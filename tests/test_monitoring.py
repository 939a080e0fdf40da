"""Pipeline metrics pushed to a real Pushgateway (Debian `prometheus-pushgateway`)."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from readmission import drift, monitoring
from tests.factories import pipeline_run_figures, register_model
from tests.servers import Pushgateway, free_port

RUN_FIGURES = pipeline_run_figures()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    server = Pushgateway(tmp_path_factory.mktemp("pushgateway")).start()
    yield server
    server.stop()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(metric name, sorted labels without job/instance) -> value of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("job", "instance")))
            found[(sample.name, labels)] = sample.value
    return found


def exposition(*args, **kwargs) -> str:
    """The text Prometheus would scrape for `monitoring.run_registry(*args, **kwargs)`."""
    return generate_latest(monitoring.run_registry(*args, **kwargs)).decode()


def pipeline_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {key: value for key, value in samples(text).items() if key[0].startswith("diabetes_pipeline_")}


def test_a_runs_figures_become_metrics_by_stage_task_and_decision():
    production = {"version": 3.0, "created": 1_690_000_000.0}
    found = samples(exposition(RUN_FIGURES, {"age": 0.03, "insulin": 0.4}, production, finished=1_700_000_000))
    assert found[("diabetes_pipeline_rows", (("stage", "fetched"),))] == 1_000
    assert found[("diabetes_pipeline_rows", (("stage", "stored"),))] == 990
    assert found[("diabetes_pipeline_rows", (("stage", "rejected"),))] == 10
    assert found[("diabetes_pipeline_task_duration_seconds", (("task", "train"),))] == 43.0
    assert {labels for name, labels in found if name == "diabetes_pipeline_task_duration_seconds"} == {
        (("task", task),) for task in RUN_FIGURES}
    assert found[("diabetes_pipeline_batch_number", ())] == 3
    assert found[("diabetes_pipeline_live_roc_auc", ())] == 0.64
    assert found[("diabetes_pipeline_training_seconds", ())] == 41.5
    assert found[("diabetes_pipeline_gate_roc_auc", (("model", "challenger"),))] == 0.66
    assert found[("diabetes_pipeline_promotion_decision", (("decision", "promoted"),))] == 1
    assert found[("diabetes_pipeline_promotion_decision", (("decision", "kept_as_challenger"),))] == 0
    assert found[("diabetes_pipeline_feature_psi", (("feature", "insulin"),))] == 0.4
    assert found[("diabetes_pipeline_last_success_timestamp_seconds", ())] == 1_700_000_000
    assert found[("diabetes_pipeline_production_model_version", ())] == 3
    assert found[("diabetes_pipeline_production_model_created_timestamp_seconds", ())] == 1_690_000_000


def test_figures_a_run_does_not_have_are_left_out_rather_than_zero():
    figures = {**RUN_FIGURES, "score_batch": {"batch": 3, "model_version": None, "rows_scored": 0,
                                              "live_roc_auc": None, "live_accuracy": None, "seconds": 0.1},
               "promote": {"batch": 3, "decision": "no_new_model", "promoted": False, "seconds": 0.1}}  # fmt: skip
    names = {name for name, _ in samples(exposition(figures))}
    assert "diabetes_pipeline_live_roc_auc" not in names and "diabetes_pipeline_gate_roc_auc" not in names
    assert "diabetes_pipeline_feature_psi" not in names
    assert "diabetes_pipeline_promotion_decision" in names


@pytest.mark.servers
def test_a_push_replaces_the_previous_runs_metrics(make_settings, pushgateway):
    settings = make_settings(pushgateway_url=pushgateway.url)
    assert monitoring.push_run_metrics(settings, RUN_FIGURES, {"insulin": 0.4}) is True
    first = pipeline_samples(pushgateway.metrics())
    assert first[("diabetes_pipeline_rows", (("stage", "stored"),))] == 990
    assert first[("diabetes_pipeline_feature_psi", (("feature", "insulin"),))] == 0.4

    rerun = {**RUN_FIGURES, "store_clean": {**RUN_FIGURES["store_clean"], "rows_stored": 980}}
    assert monitoring.push_run_metrics(settings, rerun) is True
    second = pipeline_samples(pushgateway.metrics())
    assert second[("diabetes_pipeline_rows", (("stage", "stored"),))] == 980
    assert not [key for key in second if key[0] == "diabetes_pipeline_feature_psi"]


@pytest.mark.servers
def test_the_pushed_metrics_carry_the_pipelines_job_label(make_settings, pushgateway):
    monitoring.push_run_metrics(make_settings(pushgateway_url=pushgateway.url), RUN_FIGURES)
    families = {f.name: f for f in text_string_to_metric_families(pushgateway.metrics())}
    assert {s.labels["job"] for s in families["diabetes_pipeline_batch_number"].samples} == {"diabetes_pipeline"}


def test_no_pushgateway_configured_logs_the_figures_instead(make_settings, caplog):
    with caplog.at_level(logging.INFO, logger="readmission.monitoring"):
        assert monitoring.push_run_metrics(make_settings(pushgateway_url=""), RUN_FIGURES) is False
    assert "PUSHGATEWAY_URL is empty" in caplog.text


def test_an_unreachable_pushgateway_is_a_warning_not_a_failed_run(make_settings, caplog):
    settings = make_settings(pushgateway_url=f"127.0.0.1:{free_port()}")
    assert monitoring.push_run_metrics(settings, RUN_FIGURES) is False
    assert "were not pushed" in caplog.text


# --- report_run: drift and the production model, from the real stores ---------------------------------


@pytest.fixture
def trained_store(make_settings, tmp_path):
    """Settings on SQLite stores holding batch 1 (raw and clean) and a version 1 @production trained on
    the same synthetic population."""
    from readmission import ingest
    from readmission.sources import Batch
    from readmission.storage import Storage
    from tests.factories import encounter_rows

    settings = make_settings(mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # not another test's
    storage = Storage.from_settings(settings)
    storage.create_schema()
    ingest.ingest_batch(storage, Batch(1, 2, encounter_rows(1_000, seed=11)), "test")
    storage.dispose()
    register_model(settings)
    return settings


@pytest.mark.servers
def test_a_reported_run_pushes_the_batchs_drift_against_the_scoring_models_training_data(trained_store, pushgateway):
    settings = trained_store.model_copy(update={"pushgateway_url": pushgateway.url})
    report = monitoring.report_run(settings, pipeline_run_figures(batch=1, scored_by="1"))
    assert report["pushed"] is True and set(report["drift"]) == set(drift.FEATURES)
    assert max(report["drift"].values()) < 0.1  # the same synthetic population as the training rows
    found = pipeline_samples(pushgateway.metrics())
    assert {labels for name, labels in found if name == "diabetes_pipeline_feature_psi"} == {
        (("feature", f),) for f in drift.FEATURES}
    assert found[("diabetes_pipeline_production_model_version", ())] == 1
    assert time.time() - 600 < found[("diabetes_pipeline_production_model_created_timestamp_seconds", ())] < time.time()


@pytest.mark.servers
def test_a_run_whose_drift_cannot_be_measured_still_pushes_its_figures(make_settings, pushgateway, caplog,
                                                                       monkeypatch):  # fmt: skip
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = make_settings(pushgateway_url=pushgateway.url, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    report = monitoring.report_run(settings, RUN_FIGURES)  # MLflow is down
    assert report["pushed"] is True and report["drift"] == {}
    assert "could not be read" in caplog.text
    assert pipeline_samples(pushgateway.metrics())[("diabetes_pipeline_batch_number", ())] == 3
