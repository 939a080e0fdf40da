"""`diabetes_pipeline` run by Airflow itself (`dag.test()`) against the real stack the tests start:
MariaDB, moto's S3 server (for MinIO), the MLflow server (MariaDB backend, S3 artifacts) and the
Flask data API on synthetic data. The tasks run in this process, on settings read from the environment.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa

from readmission import pipeline
from readmission.dataset import synthetic_dataset
from tests.servers import S3_TEST_CREDENTIALS, free_port, start_data_api, wait_until
from tests.snapshots import assert_same
from tests.snapshots import snapshot as stores_snapshot

pytestmark = pytest.mark.servers

RETRY_DELAY_SECONDS = 2
BUCKET = "pipeline-e2e-batches"
STORAGE_TASKS = ("check_source", "fetch_batch", "store_raw", "store_clean", "export_batch")


# --- the stack (MariaDB, moto's S3 server and the MLflow server are the session's, see conftest) ---------


@pytest.fixture(scope="module")
def pipeline_dag(airflow_db):
    """The DAG as Airflow parses it from `dags/`, with short retry delays."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINE_RETRY_DELAY_SECONDS", str(RETRY_DELAY_SECONDS))
        yield pipeline.load_dag()


@pytest.fixture
def stack(request, mariadb, s3_server, mlflow_server, synthetic_data_api, make_settings, monkeypatch):
    """Settings on the stack (fresh raw and clean databases, an empty batch bucket, a model name of its own),
    exported to the environment the tasks read; the serving URL answers nothing, so notify_serving can only warn."""
    mariadb.reset("raw_data_db", "clean_data_db")
    settings = make_settings(
        data_api_url=synthetic_data_api, raw_db_url=mariadb.url("raw_data_db"), clean_db_url=mariadb.url("clean_data_db"),
        mlflow_tracking_uri=mlflow_server.url, model_name=f"e2e-{request.node.name[:40]}", batch_store="s3",
        s3_endpoint_url=s3_server.url, s3_bucket=BUCKET, serving_url=f"http://127.0.0.1:{free_port()}",
        promotion_min_auc=0.5, pipeline_retry_delay_seconds=RETRY_DELAY_SECONDS,
    )  # fmt: skip
    for name, value in {**pipeline.settings_environment(settings), **S3_TEST_CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    for key in batch_store_keys(s3_server):
        s3_server.client().delete_object(Bucket=BUCKET, Key=key)
    return settings


def batch_store_keys(s3_server) -> list[str]:
    """The keys of the batch bucket (none before a run has created it)."""
    buckets = {bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]}
    return sorted(s3_server.keys(BUCKET)) if BUCKET in buckets else []


def snapshot(settings, s3_server) -> dict[str, object]:
    """Everything a run writes (see tests.snapshots), the batch bucket included."""
    return stores_snapshot(settings, batch_store_keys(s3_server))


# --- running and observing ----------------------------------------------------------------------------


def run(dag, mark_success: str | None = None, **conf) -> dict[str, tuple[str, int]]:
    """One dag.test() run with `conf` as its params: each task's (state, tries)."""
    conf = {"batch": None, "force_retrain": False, **conf}
    dag_run = dag.test(run_conf=conf, mark_success_pattern=mark_success)
    return {ti.task_id: (str(ti.state), ti.try_number) for ti in dag_run.get_task_instances()}


def states(result: dict[str, tuple[str, int]]) -> dict[str, str]:
    return {task: state for task, (state, _) in result.items()}


def task_order(dag) -> list[str]:
    """Every task id of the DAG in the order it runs (the pipeline's, then any reporting after them)."""
    return [task.task_id for task in dag.topological_sort()]


def table_names(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


# --- the runs ----------------------------------------------------------------------------------------


def test_two_batches_flow_to_a_promoted_model_and_a_rerun_changes_nothing_unless_retraining_is_forced(
    pipeline_dag, stack, s3_server
):
    first = run(pipeline_dag, batch=1)
    assert set(states(first).values()) == {"success"}, first
    after_first = snapshot(stack, s3_server)
    assert len(after_first["diabetes_raw"]) == 1_000
    assert after_first["batch_log"]["rows_received"].tolist() == [1_000]
    assert len(after_first["diabetes_clean"]) == after_first["batch_log"]["rows_stored"].sum()
    assert after_first["predictions"].empty  # no production model to score batch 1 with
    assert after_first["versions"] == [1] and after_first["aliases"] == {"production": "1"}
    assert after_first["batch_store"] == ["batches/1/clean.parquet", "batches/1/raw.parquet"]

    second = run(pipeline_dag, batch=2)
    assert set(states(second).values()) == {"success"}, second
    after_second = snapshot(stack, s3_server)
    clean = after_second["diabetes_clean"]
    assert len(after_second["diabetes_raw"]) == 2_000
    assert len(clean) == after_second["batch_log"]["rows_stored"].sum()
    predictions = after_second["predictions"]
    assert sorted(predictions["encounter_id"]) == sorted(clean.loc[clean["batch_number"] == 2, "encounter_id"])
    assert set(predictions["model_version"]) == {"1"} and set(predictions["batch_number"]) == {2}
    assert after_second["versions"] == [1, 2]
    assert after_second["aliases"] in ({"production": "2"}, {"production": "1", "challenger": "2"})
    assert "batches/2/clean.parquet" in after_second["batch_store"]

    rerun = run(pipeline_dag, batch=1)
    assert set(states(rerun).values()) == {"success"}, rerun
    assert_same(after_second, snapshot(stack, s3_server))

    forced = run(pipeline_dag, batch=1, force_retrain=True)
    assert set(states(forced).values()) == {"success"}, forced
    after_forced = snapshot(stack, s3_server)
    assert after_forced["versions"] == [1, 2, 3]
    assert_same({k: v for k, v in after_second.items() if k not in ("versions", "aliases")},
                {k: v for k, v in after_forced.items() if k not in ("versions", "aliases")})  # fmt: skip


def test_a_data_api_that_does_not_answer_skips_the_run_and_writes_nothing(pipeline_dag, stack, s3_server, monkeypatch):
    monkeypatch.setenv("DATA_API_URL", f"http://127.0.0.1:{free_port()}")
    result = run(pipeline_dag, batch=1)
    assert states(result) == {task: "skipped" for task in task_order(pipeline_dag)}
    assert table_names(stack.raw_db_url) == [] and table_names(stack.clean_db_url) == []
    assert batch_store_keys(s3_server) == []


@pytest.fixture(scope="module")
def malformed_data_api(tmp_path_factory):
    """A data API whose batch 2 (of 1,000 rows) holds a `readmitted` value the data set never uses in every row."""
    frame = synthetic_dataset(2_000, seed=11)
    frame.loc[1_000:, "readmitted"] = "YES"
    path = tmp_path_factory.mktemp("malformed") / "malformed.csv"
    frame.to_csv(path, index=False)
    server, url = start_data_api(path, tmp_path_factory.mktemp("logs"), batch_size=1_000)
    yield url
    server.stop()


def test_a_malformed_batch_fails_at_validation_without_retries_and_nothing_is_written_after_store_raw(
    pipeline_dag, stack, s3_server, malformed_data_api, monkeypatch
):
    monkeypatch.setenv("DATA_API_URL", malformed_data_api)
    result = run(pipeline_dag, batch=2)
    order = task_order(pipeline_dag)
    failed = order.index("store_clean")
    assert states(result) == {
        **{task: "success" for task in order[:failed]},
        "store_clean": "failed",
        **{task: "upstream_failed" for task in order[failed + 1 :]},
    }
    assert result["store_clean"][1] == 1  # refused at once: retrying cannot fix a batch
    written = snapshot(stack, s3_server)
    assert len(written["diabetes_raw"]) == 1_000
    assert written["batch_log"]["status"].tolist() == ["raw_stored"]
    assert written["diabetes_clean"].empty and written["quarantine"].empty and written["predictions"].empty
    assert written["batch_store"] == ["batches/2/raw.parquet"] and written["versions"] == []


def test_mysql_refusing_connections_for_a_moment_is_retried_without_duplicates(pipeline_dag, stack, s3_server,
                                                                               mariadb, airflow_db):  # fmt: skip
    """MariaDB is stopped before the run and started again once store_raw has failed its first try."""
    restarted = threading.Event()

    def restart_after_the_first_failure() -> None:
        wait_until(lambda: _task_state(airflow_db, "store_raw") == "up_for_retry", timeout=120,
                   what="store_raw to fail and wait for its retry")  # fmt: skip
        mariadb.start()
        restarted.set()

    mariadb.stop()
    watcher = threading.Thread(target=restart_after_the_first_failure, daemon=True)
    watcher.start()
    try:
        model_tasks = "|".join(task for task in task_order(pipeline_dag) if task not in STORAGE_TASKS)
        result = run(pipeline_dag, mark_success=model_tasks, batch=3)
    finally:
        watcher.join(timeout=180)
        if not restarted.is_set():
            mariadb.start()
    assert restarted.is_set()
    assert {task: result[task][0] for task in STORAGE_TASKS} == {task: "success" for task in STORAGE_TASKS}
    assert result["store_raw"][1] >= 2  # it did fail first
    written = snapshot(stack, s3_server)
    assert len(written["diabetes_raw"]) == 1_000 and written["diabetes_raw"]["encounter_id"].is_unique
    assert len(written["diabetes_clean"]) == written["batch_log"]["rows_stored"].sum()
    assert written["batch_log"]["batch_number"].tolist() == [3]


def _task_state(airflow_home, task_id: str) -> str | None:
    """The state of the latest try of `task_id`, read straight from Airflow's SQLite metadata DB."""
    with sqlite3.connect(airflow_home / "airflow.db", timeout=5) as conn:
        row = conn.execute("SELECT state FROM task_instance WHERE task_id = ? ORDER BY rowid DESC LIMIT 1",
                           (task_id,)).fetchone()  # fmt: skip
    return row[0] if row else None


def test_a_local_run_migrates_its_own_metadata_db_under_the_data_folder(tmp_path):
    """`run_dag_locally` (what `make demo` calls) in a fresh process: it sets Airflow up under DATA_DIR by itself."""
    script = (
        "import json, sys\n"
        "from readmission import pipeline\n"
        "from readmission.config import Settings\n"
        "settings = Settings(_env_file=None, data_dir=sys.argv[1], data_api_url=sys.argv[2])\n"
        "print(json.dumps(pipeline.run_dag_locally(settings, batch=1).states))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data"), f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=600, env={k: v for k, v in os.environ.items()
                                                                            if not k.startswith("AIRFLOW")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    states = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(states)[: len(pipeline.TASK_IDS)] == list(pipeline.TASK_IDS)
    assert set(states.values()) == {"skipped"}
    assert (tmp_path / "data" / "airflow" / "airflow.db").is_file()
