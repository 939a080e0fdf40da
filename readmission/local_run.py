"""Runs of `diabetes_pipeline` through Airflow itself (`dag.test()`) on this machine, for `make demo`.

Airflow reads its configuration, and the DAG's tasks their settings, from the environment of the
process they run in, once. So `run_dag_locally` starts one child process with the settings and
Airflow's local configuration (`airflow_environment`: AIRFLOW_HOME and a SQLite metadata DB under
DATA_DIR, migrated on first use) in its environment; the child runs the DAG in-process
(`run_dag_here`) once per batch asked for and sends what the tasks did back through a pipe, one
line per run, as each run ends. Airflow is imported once for all the runs. The parent's own
environment is never written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
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


def run_dag_locally(
    settings: Settings, batches: Sequence[int | None], force_retrain: bool = False
) -> Iterator[LocalRun]:
    """Run `diabetes_pipeline` on `settings` through Airflow once per batch of `batches` (None: the data API's
    current one), in one child process; what the tasks of each run did, as each run ends.

    The child's output goes where this process's goes. RuntimeError when the child ends before
    every run has an outcome (a run's own failures are task states).
    """
    batches = list(batches)
    environment = {**os.environ, **settings_environment(settings), **airflow_environment(settings)}
    read_end, write_end = os.pipe()
    request = json.dumps({"batches": batches, "force_retrain": force_retrain, "outcomes_fd": write_end})
    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen([sys.executable, "-c", CHILD, request], env=environment, pass_fds=(write_end,))
    os.close(write_end)
    runs = 0
    try:
        with os.fdopen(read_end) as outcomes:
            for line in outcomes:
                runs += 1
                yield LocalRun(**json.loads(line))
    finally:
        if child.poll() is None and runs < len(batches):  # the caller stopped early
            child.terminate()
        child.wait()
    if runs < len(batches):
        raise RuntimeError(
            f"the local runs of {DAG_ID} ended after {runs} of {len(batches)} (exit code {child.returncode})"
        )


def main() -> None:
    """The child of `run_dag_locally`: run the DAG here once per batch asked for, each outcome a line on the pipe."""
    request = json.loads(sys.argv[1])
    with os.fdopen(request["outcomes_fd"], "w") as outcomes:
        for batch in request["batches"]:
            run = run_dag_here(batch, request["force_retrain"])
            outcomes.write(json.dumps(asdict(run), default=str) + "\n")
            outcomes.flush()


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
        # scalars() gives the XCom rows themselves; Airflow types its query as rows of one-tuples.
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}  # type: ignore[attr-defined]


@cache
def _migrate_airflow_db(airflow_home: str) -> None:
    """Create or upgrade Airflow's metadata DB (what `airflow db migrate` does), once per process."""
    Path(airflow_home).mkdir(parents=True, exist_ok=True)
    from airflow.utils import db

    db.initdb()
