"""DAG integrity: every DAG file parses with no connections available, and `diabetes_pipeline`
is configured as the platform expects (tasks in order, retries, schedule, params)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from readmission.pipeline import DAG_ID, DAGS_FOLDER, TASK_IDS


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    """Every file of `dags/` parsed (safe mode off) with no Airflow connection defined anywhere."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
            patch.delenv(name)
        yield DagBag(dag_folder=DAGS_FOLDER, safe_mode=False)


@pytest.fixture(scope="module")
def pipeline_dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    files = {path.name for path in DAGS_FOLDER.glob("*.py")}
    assert files and files == {os.path.basename(dag.fileloc) for dag in dagbag.dags.values()}


def test_the_dags_folder_is_not_a_package():
    assert not (DAGS_FOLDER / "__init__.py").exists()


def test_the_tasks_run_one_after_the_other_in_the_pipeline_order(pipeline_dag):
    """The pipeline's tasks form one chain in order; only reporting (observability) may follow notify_serving."""
    order = [task.task_id for task in pipeline_dag.topological_sort()]
    assert order[: len(TASK_IDS)] == list(TASK_IDS)
    for task_id, next_id in zip(order, order[1:], strict=False):
        assert pipeline_dag.get_task(task_id).downstream_task_ids == {next_id}
    assert pipeline_dag.get_task(order[-1]).downstream_task_ids == set()


def test_every_task_is_retried_at_least_twice_after_a_delay(pipeline_dag):
    for task in pipeline_dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_delay >= timedelta(seconds=1), task.task_id


def test_it_runs_every_five_minutes_one_run_at_a_time_without_catching_up(pipeline_dag):
    assert pipeline_dag.timetable.expression == "*/5 * * * *"
    assert pipeline_dag.catchup is False
    assert pipeline_dag.max_active_runs == 1


def test_it_is_documented_and_tagged(pipeline_dag):
    assert pipeline_dag.tags and "diabetes" in pipeline_dag.tags
    assert "check_source" in pipeline_dag.doc_md


def test_a_run_can_force_a_batch_and_a_retrain_and_defaults_to_neither(pipeline_dag):
    assert pipeline_dag.params.validate() == {"batch": None, "force_retrain": False}
    assert pipeline_dag.params.get_param("batch").resolve(3) == 3
    assert pipeline_dag.params.get_param("force_retrain").resolve(True) is True


@pytest.mark.parametrize("value", [0, -1, "three", 2.5])
def test_a_forced_batch_must_be_a_batch_number(pipeline_dag, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        pipeline_dag.params.get_param("batch").resolve(value)
