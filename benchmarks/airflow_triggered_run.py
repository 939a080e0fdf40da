"""Benchmark: how long a run triggered from Airflow's UI takes, end to end, with Airflow's own scheduler.

`readmission airflow` (what `make airflow` runs) starts Airflow's scheduler, DAG processor,
triggerer and API server on a PostgreSQL metadata database (Debian's binaries, as the tests
start them), with the raw and clean stores in MariaDB given as Airflow connections and the
data API on DATASET_PATH. Batches 1 and 2 (15,000 rows each) are then triggered through the
REST API exactly as the UI's Trigger button does. For each it prints the time from the trigger
to the run's end (queueing, the scheduler's pick-up, one process per task) and each task's
duration: batch 1 trains the first model, batch 2 is scored by it and trains on both batches.

    DATASET_PATH=../shared/data/diabetic_data.csv.gz .venv/bin/python benchmarks/airflow_triggered_run.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readmission import pipeline  # noqa: E402
from readmission.config import Settings  # noqa: E402
from tests.servers import MariaDB, PostgreSQL, free_port, start_airflow, start_data_api  # noqa: E402

BATCHES = (1, 2)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> int:
    dataset = os.environ.get("DATASET_PATH")
    if not dataset:
        print("set DATASET_PATH to the UCI file")
        return 2
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        postgresql, mariadb = PostgreSQL().start(), MariaDB(root / "mariadb").start()
        data_api, url = start_data_api(dataset, root / "logs", batch_size=15_000)
        settings = Settings(
            _env_file=None,
            data_dir=root / "data",
            data_api_url=url,
            airflow_port=free_port(),
            serving_url=f"http://127.0.0.1:{free_port()}",
            pipeline_schedule="",
        )
        connections = {
            settings.mysql_raw_conn_id: mariadb.url("raw_data_db"),
            settings.mysql_clean_conn_id: mariadb.url("clean_data_db"),
        }
        started = time.perf_counter()
        airflow, api = start_airflow(settings, postgresql.url, connections, root / "readmission-airflow.log")
        print(f"Airflow answered {time.perf_counter() - started:.0f} s after `readmission airflow` started")
        failed = False
        try:
            api.unpause(pipeline.DAG_ID)
            for batch in BATCHES:
                response = api.trigger(pipeline.DAG_ID, {"batch": batch})
                response.raise_for_status()
                run = api.wait_for_run(pipeline.DAG_ID, response.json()["dag_run_id"], timeout=1200)
                answer = api.request("GET", f"/dags/{pipeline.DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances").json()
                tasks = sorted(answer["task_instances"], key=lambda ti: ti["start_date"] or "")
                print(
                    f"\nbatch {batch}: {run['state']}, {seconds_between(run['queued_at'], run['end_date']):.1f} s from "
                    f"the trigger to the end ({seconds_between(run['start_date'], run['end_date']):.1f} s running)"
                )
                for ti in tasks:
                    print(f"  {ti['task_id']:<20} {ti['duration'] or 0:6.2f} s  {ti['state']}")
                failed |= run["state"] != "success"
        finally:
            airflow.stop()
            data_api.stop()
            mariadb.stop()
            postgresql.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
