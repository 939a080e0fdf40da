"""Benchmark: one scheduled `diabetes_pipeline` run, training included, end to end in <= 60 s on 2 cores.

The run takes a 15,000-row batch of the real data set while about 87,000 rows are already
stored (every other batch, ingested beforehand with a production model trained on them),
so it fetches, stores, cleans, exports, scores with the champion, trains on ~101,766 rows,
registers, runs the gate and notifies serving, as a scheduled run in production would.

It starts a throw-away MariaDB (the Debian binaries, as the tests do) and the real data API
(gunicorn) on DATASET_PATH; MLflow is the embedded store under a temporary DATA_DIR. The run
goes through Airflow itself (`dag.test()`, tasks in this process, which plays the Airflow worker:
its environment holds the settings and Airflow's local configuration, set before Airflow is
imported); Airflow is warmed up first by re-running an already stored batch (which trains
nothing), as a running scheduler would be.
It prints the run's wall time, each task's duration, and this process's CPU seconds: on a
machine shared with other work, wall time stretches with the load, CPU time much less.

    DATASET_PATH=../shared/data/diabetic_data.csv.gz .venv/bin/python benchmarks/pipeline_run.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402

from readmission import ingest, local_run  # noqa: E402
from readmission.config import Settings, settings_environment  # noqa: E402
from readmission.model.gate import train_and_register  # noqa: E402
from readmission.storage import Storage  # noqa: E402
from tests.servers import MariaDB, start_data_api  # noqa: E402

BATCH_SIZE = 15_000
MEASURED_BATCH = 6  # a full 15,000-row batch; the data set's 7th and last batch is shorter
TARGET_SECONDS = 60.0


def accumulate(settings: Settings, batches: list[int]) -> int:
    """Ingest `batches` straight from the data API and train the production model on them; rows stored."""
    storage = Storage.from_settings(settings)
    storage.create_schema()
    for number in batches:
        print(ingest.ingest_batch(storage, ingest.fetch(settings.data_api_url, number), "benchmark"))
    stored = int(storage.batch_log()["rows_received"].sum())
    storage.dispose()
    print(train_and_register(settings))
    return stored


def task_durations(dag_run) -> dict[str, float]:
    return {ti.task_id: ti.duration or 0.0 for ti in sorted(dag_run.get_task_instances(), key=lambda t: t.start_date)}


def main() -> int:
    dataset = os.environ.get("DATASET_PATH") or str(REPO_ROOT.parent / "shared/data/diabetic_data.csv.gz")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        mariadb = MariaDB(root / "mariadb").start()
        data_api, url = start_data_api(dataset, root / "logs", batch_size=BATCH_SIZE)
        try:
            settings = Settings(
                _env_file=None,
                data_dir=root / "data",
                dataset_path=dataset,
                data_api_url=url,
                batch_size=BATCH_SIZE,
                raw_db_url=mariadb.url("raw_data_db", "mysqldb"),
                clean_db_url=mariadb.url("clean_data_db", "mysqldb"),
                serving_url="http://127.0.0.1:9",
            )
            total = int(requests.get(f"{url}/health", timeout=10).json()["total_batches"])
            others = [n for n in range(1, total + 1) if n != MEASURED_BATCH]
            started = time.perf_counter()
            stored = accumulate(settings, others)
            print(
                f"accumulated {stored} rows of batches {others} and a production model in "
                f"{time.perf_counter() - started:.0f} s"
            )

            os.environ.update({**settings_environment(settings), **local_run.airflow_environment(settings)})
            warm_up = local_run.run_dag_here(batch=others[-1])
            assert set(warm_up.states.values()) == {"success"}, warm_up.states
            dag = local_run.load_dag()
            cpu, wall = time.process_time(), time.perf_counter()
            dag_run = dag.test(run_conf={"batch": MEASURED_BATCH, "force_retrain": False})
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            data_api.stop()
            mariadb.stop()

    durations = task_durations(dag_run)
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    print(f"\nrun of batch {MEASURED_BATCH} ({BATCH_SIZE} rows) on top of {stored} stored rows: {dag_run.state}")
    for task_id, seconds in durations.items():
        print(f"  {task_id:<20} {seconds:6.2f} s  {states[task_id]}")
    print(f"  {'sum of tasks':<20} {sum(durations.values()):6.2f} s")
    print(f"end to end: {wall:.1f} s wall, {cpu:.1f} s CPU in this process (Airflow, tasks, training threads)")
    passed = str(dag_run.state) == "success" and wall <= TARGET_SECONDS
    print(f"{'PASS' if passed else 'FAIL'}: {wall:.1f} s end to end (target <= {TARGET_SECONDS:.0f} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
