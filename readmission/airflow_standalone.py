"""`make airflow`: Airflow's own scheduler, DAG processor, triggerer and API server (the UI) on this machine.

The parts are started as `airflow ...` processes, as `airflow standalone` would start them, but
each told to listen on 127.0.0.1 only and to leave log serving to the API server, which reads
the task logs from disk. Airflow keeps its metadata in SQLite under DATA_DIR/airflow unless
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN names another database (PostgreSQL, as deployments and the
tests do). The tasks run on the platform's settings, passed down as the environment, and pull
from the data API at DATA_API_URL: one is started on DATASET_PATH unless one answers there.
The user `admin` signs in with AIRFLOW_ADMIN_PASSWORD, or with the password Airflow generates
(and this command prints) when that setting is empty.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

from readmission import pipeline, processes
from readmission.config import Settings

USER = "admin"
HEALTH_PATH = "/api/v2/monitor/health"
GENERATED_PASSWORDS = "simple_auth_manager_passwords.json.generated"
PARALLELISM = 4  # task processes at once: the DAG runs its tasks one after another
PARTS = {
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def ui_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.airflow_port}"


def _home(settings: Settings) -> Path:
    return Path(pipeline.airflow_environment(settings)["AIRFLOW_HOME"])


def passwords_file(settings: Settings) -> Path:
    """Where the simple auth manager reads the users' passwords: ours when AIRFLOW_ADMIN_PASSWORD is set."""
    name = "passwords.json" if settings.airflow_admin_password.get_secret_value() else GENERATED_PASSWORDS
    return _home(settings) / name


def environment(settings: Settings) -> dict[str, str]:
    """The environment of every Airflow part: the platform's settings, Airflow's home, DAGs folder and API address,
    and the admin user. A metadata DB already named in this process's environment is kept."""
    airflow = pipeline.airflow_environment(settings)
    if os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        del airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    return {
        **pipeline.settings_environment(settings),
        **airflow,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{ui_url(settings)}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
    }


def login(settings: Settings) -> tuple[str, str]:
    """The admin user and its password, as the running Airflow knows them."""
    return USER, json.loads(passwords_file(settings).read_text())[USER]


def start(settings: Settings, timeout: float = 300.0) -> list[subprocess.Popen]:
    """Migrate the metadata DB, start the parts (output in DATA_DIR/logs/airflow-<part>.log), and wait for the API."""
    env, airflow = environment(settings), str(processes.BIN_DIR / "airflow")
    _home(settings).mkdir(parents=True, exist_ok=True)
    if password := settings.airflow_admin_password.get_secret_value():
        passwords_file(settings).touch(mode=0o600)
        passwords_file(settings).write_text(json.dumps({USER: password}))
    log = processes.logs_dir(settings) / "airflow-db-migrate.log"
    with log.open("ab") as output:
        migrated = subprocess.run(
            [airflow, "db", "migrate"],
            env=processes.environment(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if migrated.returncode:
        raise RuntimeError(f"`airflow db migrate` failed; see {log}")
    api_server = [airflow, "api-server", "--host", "127.0.0.1", "--port", str(settings.airflow_port)]
    started = [processes.launch(api_server, env, "airflow-api-server.log", settings)]
    started += [
        processes.launch([airflow, *args], env, f"airflow-{part}.log", settings) for part, args in PARTS.items()
    ]
    try:
        processes.wait_ready(
            started[0], ui_url(settings) + HEALTH_PATH, processes.logs_dir(settings) / "airflow-api-server.log", timeout
        )
    except Exception:
        processes.stop(started)
        raise
    return started


def run(settings: Settings) -> int:
    """`make airflow`: a data API, then Airflow until Ctrl-C; prints where to sign in and how to trigger a run."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    processes.stop_on_sigterm()
    started: list[subprocess.Popen] = []
    try:
        data_api, dataset, warning = processes.start_data_api(settings)
        started += [data_api] if data_api else []
        if warning:
            print(warning)
        print(f"data API    {settings.data_api_url}  serves {dataset}")
        print("starting Airflow's scheduler, DAG processor, triggerer and API server: about a minute...")
        started += start(settings)
        user, password = login(settings)
        print(f"Airflow UI  {ui_url(settings)}  user {user}, password {password}")
        print("            DAG diabetes_pipeline: press Trigger and give a batch number in `batch` (empty: the data")
        print("            API's current batch), or unpause it to take a batch every 5 minutes")
        print(f"logs        airflow-*.log in {processes.logs_dir(settings)}; each task's in {_home(settings) / 'logs'}")
        print("Ctrl-C stops everything.")
        while all(process.poll() is None for process in started):
            time.sleep(1)
        failed = next(process for process in started if process.poll() is not None)
        command = " ".join([processes.program_name(failed), *map(str, cast(list, failed.args)[1:2])])
        print(f"{command} exited with {failed.returncode}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        processes.stop(started)
