"""
### diabetes_pipeline: one run = one batch, from the EC2 data API to a promoted model

Every 5 minutes (the data API's rotation; `PIPELINE_SCHEDULE`, empty for triggered runs only) a run
takes the data API's current batch, or the batch given in the `batch` param, through:

`check_source` → `fetch_batch` → `store_raw` → `store_clean` → `export_batch` → `score_batch` →
`train` → `register` → `promote` → `notify_serving` → `report_run`

* **Skipped, not failed**, when the EC2 instance is stopped or the data API does not answer.
* **Idempotent**: every write is keyed by batch number and encounter id, so re-running a run
  or clearing a task leaves the tables as they were. A batch already trained on is not trained
  on again unless the `force_retrain` param (or `FORCE_RETRAIN`) says so.
* `store_clean` validates and cleans the stored raw rows once, then stores them. A malformed batch, or one
  without a usable row, fails it without retries: nothing is written after `store_raw`.
* `notify_serving` failing is a warning, not a failed run.
* XCom carries batch numbers, counts and ids only; rows move through the databases and the batch store.

MySQL comes from the Airflow connections `MYSQL_RAW_CONN_ID` / `MYSQL_CLEAN_CONN_ID` when they
exist (used through mysqlclient, which reads rows four times faster than PyMySQL), else from
`RAW_DB_URL` / `CLEAN_DB_URL`. Everything else comes from the settings
(`readmission.config.Settings`, i.e. the environment). The logic lives in `readmission.pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException

from readmission.config import Settings

DAG_SETTINGS = Settings()  # read at parse time for the schedule and the retry delay only; tasks read their own


def _mysql_uri(conn_id: str) -> str | None:
    """The URI of the Airflow MySQL connection `conn_id`, or None when no such connection exists."""
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    try:
        return MySqlHook(mysql_conn_id=conn_id).get_uri()
    except AirflowNotFoundException:
        return None


def _run_settings() -> Settings:
    """This run's settings: the environment, the MySQL connections when defined, and the run's params."""
    from readmission import pipeline

    settings, params = Settings(), get_current_context()["params"]
    return pipeline.run_settings(
        settings,
        raw_db_uri=_mysql_uri(settings.mysql_raw_conn_id),
        clean_db_uri=_mysql_uri(settings.mysql_clean_conn_id),
        force_retrain=bool(params.get("force_retrain")),
    )


def _run(step: Callable[..., dict], *args: Any) -> dict:
    """Run a step of `readmission.pipeline` with this run's settings, translating the package's outcomes:
    nothing to fetch -> skipped run; a batch that can never pass -> failed without retries."""
    from readmission.pipeline import BatchRefused, RunSkipped

    try:
        return step(_run_settings(), *args)
    except RunSkipped as exc:
        raise AirflowSkipException(f"skipping this run: {exc}") from exc
    except BatchRefused as exc:
        raise AirflowFailException(f"batch refused: {exc}") from exc


# The tasks: each one a step of readmission.pipeline (imported in the task, so that parsing this file
# stays fast), taking what the task before it returned.


@task
def check_source() -> dict:
    from readmission import pipeline

    return _run(pipeline.check_source)


@task
def fetch_batch(_source: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.fetch_batch, get_current_context()["params"].get("batch"))


@task
def store_raw(fetched: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.store_raw, fetched["batch"])


@task
def store_clean(stored_raw: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.store_clean, stored_raw["batch"])


@task
def export_batch(stored: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.export_batch, stored["batch"])


@task
def score_batch(exported: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.score_batch, exported["batch"])


@task
def train(scored: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.train, scored["batch"])


@task
def register(trained: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.register, trained)


@task
def promote(registered: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.promote, registered)


@task
def notify_serving(promoted: dict) -> dict:
    from readmission import pipeline

    return _run(pipeline.notify_serving, promoted)


@task
def report_run(_notified: dict) -> dict:
    """Push what every task returned, and the batch's drift, to the Pushgateway (readmission.monitoring)."""
    from readmission import monitoring, pipeline

    earlier_tasks = pipeline.TASK_IDS[:-1]
    results = get_current_context()["ti"].xcom_pull(task_ids=list(earlier_tasks))
    return monitoring.report_run(_run_settings(), dict(zip(earlier_tasks, results, strict=True)))


@dag(
    dag_id="diabetes_pipeline",
    schedule=DAG_SETTINGS.pipeline_schedule or None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args={
        "owner": "mlops",
        "retries": 2,
        "retry_delay": timedelta(seconds=DAG_SETTINGS.pipeline_retry_delay_seconds),
    },
    params={
        "batch": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Batch number to (re)process; empty: the data API's current batch.",
        ),
        "force_retrain": Param(False, type="boolean", description="Train even if this batch was trained on."),
    },
    tags=["diabetes", "readmission", "mlops"],
    doc_md=__doc__,
)
def diabetes_pipeline():
    source = check_source()
    fetched = fetch_batch(source)
    stored_raw = store_raw(fetched)
    stored = store_clean(stored_raw)
    exported = export_batch(stored)
    scored = score_batch(exported)
    trained = train(scored)
    registered = register(trained)
    promoted = promote(registered)
    notified = notify_serving(promoted)
    report_run(notified)


diabetes_pipeline()
