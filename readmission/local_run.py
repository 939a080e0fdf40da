"""One run of `diabetes_pipeline` through Airflow itself (`dag.test()`) on this machine, for `make demo`.

Airflow reads its configuration, and the DAG's tasks their settings, from the environment of the
process they run in, once. So `run_dag_locally` starts a child process with the settings and
Airflow's local configuration (`airflow_environment`: AIRFLOW_HOME and a SQLite metadata DB under
DATA_DIR, migrated on first use) in its environment; the child runs the DAG in-process
(`run_dag_here`) and writes what the tasks did to a file the parent reads back. The parent's own
environment is never written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from readmission.config import Settings, settings_environment
from readmission.pipeline import DAG_ID, DAGS_FOLDER

CHILD = "from readmission.local_run import main; main()"


@dataclass(frozen=True)
class LocalRun:
    """One run of the DAG through `dag.test()`: each task's final state, and what the tasks returned."""

    states: dict[str, str]  # task id -> `success`, `skipped`, `failed`, ..., in the order the tasks run
    results: dict[str, Any]  # task id -> its XCom return value, for the tasks that returned one


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Airflow's configuration for local runs: AIRFLOW_HOME and a SQLite metadata DB under DATA_DIR."""
    home = settings.data_dir.resolve() / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def run_dag_locally(settings: Settings, batch: int | None = None, force_retrain: bool = False) -> LocalRun:
    """Run `diabetes_pipeline` once on `settings` through Airflow, in a child process; what its tasks did.

    The child's output goes where this process's goes. RuntimeError when the child fails
    before the run has an outcome (the run's own failures are task states).
    """
    environment = {**os.environ, **settings_environment(settings), **airflow_environment(settings)}
    with tempfile.TemporaryDirectory(prefix="dag-run-") as folder:
        outcome = Path(folder) / "run.json"
        request = json.dumps({"batch": batch, "force_retrain": force_retrain, "outcome": str(outcome)})
        sys.stdout.flush()
        sys.stderr.flush()
        done = subprocess.run([sys.executable, "-c", CHILD, request], env=environment, check=False)
        if done.returncode != 0 or not outcome.is_file():
            raise RuntimeError(f"the local run of {DAG_ID} for batch {batch} ended with exit code {done.returncode}")
        return LocalRun(**json.loads(outcome.read_text()))


def main() -> None:
    """The child of `run_dag_locally`: run the DAG here, write the outcome where the request says."""
    request = json.loads(sys.argv[1])
    run = run_dag_here(request["batch"], request["force_retrain"])
    Path(request["outcome"]).write_text(json.dumps(asdict(run), default=str))


def load_dag():
    """The `diabetes_pipeline` DAG parsed from the dags folder; ImportError naming the problem if it does not parse."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS_FOLDER)
    if DAG_ID not in bag.dags:
        raise ImportError(f"{DAG_ID} not found in {DAGS_FOLDER}: {bag.import_errors}")
    return bag.dags[DAG_ID]


def run_dag_here(batch: int | None = None, force_retrain: bool = False) -> LocalRun:
    """Run `diabetes_pipeline` once in this process, on the settings and Airflow configuration of its environment
    (which `run_dag_locally` gives the child it starts); call it before anything else imports airflow."""
    _migrate_airflow_db(os.environ["AIRFLOW_HOME"])
    dag = load_dag()
    run = dag.test(run_conf={"batch": batch, "force_retrain": force_retrain})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return LocalRun({task.task_id: states[task.task_id] for task in dag.topological_sort()}, _results(run.run_id))


def _results(run_id: str) -> dict[str, Any]:
    """What each task of the run returned, read back from Airflow's metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=DAG_ID, key="return_value")).all()
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


@cache
def _migrate_airflow_db(airflow_home: str) -> None:
    """Create or upgrade Airflow's metadata DB (what `airflow db migrate` does), once per process."""
    Path(airflow_home).mkdir(parents=True, exist_ok=True)
    from airflow.utils import db

    db.initdb()
