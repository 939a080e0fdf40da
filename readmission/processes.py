"""The platform's servers started on this machine (`make demo`, `make airflow`).

Each is a process whose output goes to a file under DATA_DIR/logs, and is ready when its URL
answers. The venv's `bin` folder leads `PATH`, because Airflow and `mlflow models serve` start
their own parts as `airflow ...` and `uvicorn ...` commands found there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from readmission.config import Settings
from readmission.dataset import DatasetError, iter_dataset_chunks, write_synthetic_csv

SYNTHETIC_ROWS = 45_000  # three batches of the default size: enough to watch promotion happen
BIN_DIR = Path(sys.executable).parent


def logs_dir(settings: Settings) -> Path:
    folder = settings.data_dir.resolve() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the venv's `bin` first on PATH, and `extra` on top."""
    path = os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", os.defpath)])
    return {**os.environ, "PATH": path, **(extra or {})}


def answers(url: str) -> bool:
    """True when `url` answers 2xx."""
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def launch(args: list[str], env: dict[str, str], log_name: str, settings: Settings) -> subprocess.Popen:
    """Start a process in a session of its own, its output in DATA_DIR/logs/`log_name`."""
    with (logs_dir(settings) / log_name).open("ab") as log:
        return subprocess.Popen(
            args,
            env=environment(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def start(
    args: list[str], env: dict[str, str], log_name: str, ready_url: str, settings: Settings, timeout: float = 180.0
) -> subprocess.Popen:
    """Start a server process, its output in DATA_DIR/logs/`log_name`, and wait until `ready_url` answers."""
    return wait_ready(launch(args, env, log_name, settings), ready_url, logs_dir(settings) / log_name, timeout)


def program_name(process: subprocess.Popen) -> str:
    """The name of the program `process` runs (`airflow`, `gunicorn`...)."""
    args = process.args
    first = args[0] if isinstance(args, list | tuple) else args
    return Path(str(first)).name


def wait_ready(process: subprocess.Popen, ready_url: str, log_path: Path, timeout: float = 180.0) -> subprocess.Popen:
    """`process` once `ready_url` answers; stopped, and an error naming its log, if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{program_name(process)} exited with {process.returncode}; see {log_path}")
        if answers(ready_url):
            return process
        time.sleep(0.5)
    stop([process])
    raise TimeoutError(f"{ready_url} did not answer within {timeout:.0f}s; see {log_path}")


def stop_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, so that what it started is stopped too (`finally` runs);
    the servers run in sessions of their own, which a signal to this process's group does not reach.

    Ctrl-C (SIGINT) gets Python's own handler back too: a process started in the background by a shell
    inherits SIGINT ignored, and Python then installs no handler, so Ctrl-C would never stop it."""
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop the processes, newest first: a process started in a session of its own with all it started."""
    for process in reversed(processes):
        if process.poll() is None:
            _signal(process, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()


def _signal(process: subprocess.Popen, number: int) -> None:
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, number)
        else:
            process.send_signal(number)
    except ProcessLookupError:
        pass


def resolve_dataset(settings: Settings) -> tuple[str, str | None]:
    """DATASET_PATH when it can be read; otherwise a synthetic data set under DATA_DIR, and a warning that says so."""
    try:
        next(iter_dataset_chunks(settings.dataset_path, 10))
        return settings.dataset_path, None
    except (DatasetError, OSError, ValueError) as exc:
        path = settings.data_dir.resolve() / "synthetic_diabetic_data.csv.gz"
        if not path.exists():
            write_synthetic_csv(path, rows=SYNTHETIC_ROWS, seed=1)
        reason = str(exc).split(": ", 1)[0]  # the first clause says what failed; the rest is the library's detail
        return str(path), (
            f"WARNING: {reason}; using a synthetic data set of the same shape instead ({path}).\n"
            "WARNING: set DATASET_PATH to the UCI file (e.g. ../shared/data/diabetic_data.csv.gz) to run on it."
        )


def start_data_api(settings: Settings) -> tuple[subprocess.Popen | None, str, str | None]:
    """The data API at DATA_API_URL: the one already answering there, or one started on DATASET_PATH.

    Returns the process started (None when one already answered), what it serves, and any warning.
    """
    if answers(f"{settings.data_api_url}/health"):
        return None, f"the data API already answering at {settings.data_api_url}", None
    dataset, warning = resolve_dataset(settings)
    process = start(
        [str(BIN_DIR / "readmission"), "data-api"],
        {"DATASET_PATH": dataset},
        "data_api.log",
        f"{settings.data_api_url}/health",
        settings,
    )
    return process, dataset, warning
