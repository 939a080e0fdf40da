"""`make airflow` as an operator uses it: `readmission airflow` starts Airflow's own scheduler, DAG processor,
triggerer and API server as processes, here on a PostgreSQL metadata database (Debian's), with the pipeline's
MySQL stores given as Airflow connections (`AIRFLOW_CONN_...`). Runs are triggered through the REST API v2
exactly as the UI triggers them, and what they write is compared with what `dag.test()` writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from readmission import pipeline
from readmission.config import Settings
from tests.servers import AirflowAPI, PostgreSQL, free_port, listening, start_airflow, start_data_api, wait_until
from tests.snapshots import assert_same, snapshot

pytestmark = pytest.mark.servers

DAG_ID = pipeline.DAG_ID
# What the runs of both sides are configured with, apart from where they write.
RUN_SETTINGS = {"promotion_min_auc": 0.5, "pipeline_retry_delay_seconds": 2, "pipeline_schedule": ""}


@pytest.fixture(scope="module")
def postgresql():
    server = PostgreSQL().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def data_api(synthetic_csv, tmp_path_factory):
    """A data API of this module's own (1,000-row batches), which a test stops."""
    server, url = start_data_api(synthetic_csv, tmp_path_factory.mktemp("data-api"), batch_size=1_000)
    yield server, url
    server.stop()


@pytest.fixture(scope="module")
def airflow(postgresql, mariadb, data_api, tmp_path_factory):
    """`readmission airflow` on PostgreSQL, its raw and clean stores reached through Airflow connections only;
    the settings of what it writes, and the REST API signed in with the login it printed."""
    data_dir = tmp_path_factory.mktemp("airflow-standalone") / "data"
    raw, clean = mariadb.create("standalone_raw"), mariadb.create("standalone_clean")
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        data_api_url=data_api[1],
        airflow_port=free_port(),
        serving_url=f"http://127.0.0.1:{free_port()}",
        **RUN_SETTINGS,
    )
    connections = {settings.mysql_raw_conn_id: raw, settings.mysql_clean_conn_id: clean}
    server, api = start_airflow(settings, postgresql.url, connections, data_dir.parent / "readmission-airflow.log")
    yield settings.model_copy(update={"raw_db_url": raw, "clean_db_url": clean}), api
    server.stop()
    # Stopping the command stops the Airflow parts it started, though they run in sessions of their own.
    wait_until(lambda: not listening(settings.airflow_port), 30, what="Airflow's API server to stop with the command")


def local_batch_keys(settings: Settings) -> list[str]:
    folder = settings.data_dir / "batches"
    return [str(path.relative_to(settings.data_dir)) for path in folder.rglob("*.parquet")] if folder.exists() else []


def trigger_and_wait(api: AirflowAPI, conf: dict) -> tuple[dict, dict[str, str]]:
    response = api.trigger(DAG_ID, conf)
    assert response.status_code == 200, response.text
    run = api.wait_for_run(DAG_ID, response.json()["dag_run_id"])
    return run, api.task_states(DAG_ID, run["dag_run_id"])


@pytest.fixture(scope="module")
def reference(airflow_db, mariadb, data_api, tmp_path_factory):
    """What `dag.test()` writes for batch 1 from the same data API, on stores of its own."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("dag-test") / "data",
        data_api_url=data_api[1],
        raw_db_url=mariadb.create("reference_raw"),
        clean_db_url=mariadb.create("reference_clean"),
        serving_url=f"http://127.0.0.1:{free_port()}",
        **RUN_SETTINGS,
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in pipeline.settings_environment(settings).items():
            patch.setenv(name, value)
        run = pipeline.load_dag().test(run_conf={"batch": 1, "force_retrain": False})
    assert str(run.state) == "success"
    return settings


def test_a_triggered_batch_writes_what_dag_test_writes(airflow, reference):
    settings, api = airflow
    api.unpause(DAG_ID)
    run, states = trigger_and_wait(api, {"batch": 1})
    assert run["state"] == "success" and set(states.values()) == {"success"}, states
    assert run["conf"] == {"batch": 1}

    triggered, expected = (
        snapshot(settings, local_batch_keys(settings)),
        snapshot(reference, local_batch_keys(reference)),
    )
    assert len(triggered["diabetes_raw"]) == 1_000
    assert_same(expected, triggered)
    assert triggered["versions"] == [1] and triggered["aliases"] == {"production": "1"}
    # The stores came from the Airflow connections: nothing was written where RAW_DB_URL's default points.
    assert not (settings.data_dir / "raw_data_db.sqlite").exists()
    assert not (settings.data_dir / "clean_data_db.sqlite").exists()


def test_the_same_batch_again_changes_no_row(airflow):
    settings, api = airflow
    before = snapshot(settings, local_batch_keys(settings))
    run, states = trigger_and_wait(api, {"batch": 1})
    assert run["state"] == "success" and set(states.values()) == {"success"}, states
    assert_same(before, snapshot(settings, local_batch_keys(settings)))


def test_a_batch_that_is_not_a_number_is_refused_before_any_run_starts(airflow):
    _, api = airflow
    runs = len(api.runs(DAG_ID))
    response = api.trigger(DAG_ID, {"batch": "abc"})
    assert response.status_code == 400 and "Invalid input for param batch" in response.text, response.text
    assert len(api.runs(DAG_ID)) == runs


def test_with_the_data_api_down_the_run_ends_with_its_tasks_skipped(airflow, data_api):
    settings, api = airflow
    before = snapshot(settings, local_batch_keys(settings))
    data_api[0].stop()
    run, states = trigger_and_wait(api, {"batch": 2})
    assert run["state"] == "success"
    assert states == {task: "skipped" for task in pipeline.TASK_IDS}
    assert_same(before, snapshot(settings, local_batch_keys(settings)))


def test_the_task_logs_are_on_disk_for_the_ui(airflow):
    settings, _ = airflow
    logs = Path(pipeline.airflow_environment(settings)["AIRFLOW_HOME"]) / "logs"
    assert any("store_raw" in str(path) for path in logs.rglob("*.log")), "no task log was written"
