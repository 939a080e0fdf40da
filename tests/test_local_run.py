"""Runs of the DAG through Airflow in a child process (`readmission.local_run`, what `make demo` calls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from readmission import pipeline
from tests.servers import free_port


def test_local_runs_set_airflow_up_under_the_data_folder_and_answer_once_per_batch(tmp_path):
    """In a fresh process (no Airflow imported, none configured): one child runs both batches, migrating its own
    metadata DB under DATA_DIR; the data API does not answer, so every task of both runs is skipped. The
    caller's environment is not written."""
    script = (
        "import json, os, sys\n"
        "from readmission import local_run\n"
        "from readmission.config import Settings\n"
        "settings = Settings(_env_file=None, data_dir=sys.argv[1], data_api_url=sys.argv[2])\n"
        "before = dict(os.environ)\n"
        "runs = [run.states for run in local_run.run_dag_locally(settings, [1, 2])]\n"
        "print(json.dumps({'runs': runs, 'environment_unchanged': dict(os.environ) == before}))\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data"), f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answer["runs"]) == 2 and answer["environment_unchanged"]
    for states in answer["runs"]:
        assert list(states)[: len(pipeline.TASK_IDS)] == list(pipeline.TASK_IDS)
        assert set(states.values()) == {"skipped"}
    assert (tmp_path / "data" / "airflow" / "airflow.db").is_file()
