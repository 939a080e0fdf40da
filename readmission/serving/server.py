"""The production launcher: gunicorn managing `API_WORKERS` uvicorn workers.

`python -m readmission.serving.server` (the Docker image's command, and what the tests
start) calls `serve(get_settings())`. Before any worker exists it wipes the Prometheus
multi-process folder (stale files would add up into the new counts), then replaces itself
(`os.execve`, same process id) with the gunicorn master, started with everything the workers
must find in their environment when they import their libraries: the settings, the Prometheus
folder, one native thread per worker (the workers are the parallelism) and MLflow's client
knobs. This process's own environment is never written.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from readmission.config import Settings, get_settings, settings_environment
from readmission.serving.auth import ApiKeysError, accepted_keys

# One native thread per worker process (read when the workers import numpy and scikit-learn).
SINGLE_THREAD_ENVIRONMENT = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")
# The model store retries on its own schedule; MLflow's client-side back-off (minutes when the
# server is down) would only hold `/reload` and the poll hostage.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
GUNICORN_MASTER = "from readmission.serving.server import run_gunicorn; run_gunicorn()"


class Worker(UvicornWorker):
    """uvicorn on uvloop and httptools, without access logs (the Prometheus metrics count every request)."""

    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools", "access_log": False}


def multiproc_dir(settings: Settings) -> Path:
    """Where the workers' Prometheus samples live: `PROMETHEUS_MULTIPROC_DIR`, or a folder under `DATA_DIR`."""
    return Path(settings.prometheus_multiproc_dir or settings.data_dir.resolve() / "prometheus-multiproc")


def wipe(folder: Path) -> None:
    """`folder` without Prometheus sample files: a previous run's must not be added to this one's.

    Only the sample files (`*.db`) go, in case the folder is shared with anything else.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for samples in folder.glob("*.db"):
        samples.unlink()


def _mark_worker_dead(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # its per-process gauges no longer count


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"{self.settings.api_host}:{self.settings.api_port}",
            "workers": self.settings.api_workers,
            "worker_class": "readmission.serving.server.Worker",
            "timeout": 120,  # a worker blocked this long (not a slow model load: that runs in a thread) is replaced
            "graceful_timeout": 20,
            "keepalive": 5,
            "proc_name": "readmission-api",
            "control_socket_disable": True,  # gunicorn's control socket: one fixed path per user, shared by all
            "child_exit": _mark_worker_dead,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from readmission.serving.app import create_app  # in each worker, whose environment `serve` set at launch

        return create_app(self.settings)


def serve(settings: Settings) -> None:
    """Run the inference service with `settings.api_workers` workers until stopped (SIGTERM/SIGINT)."""
    try:  # a bad or (with REQUIRE_API_KEYS) missing API_KEYS stops the launcher before any worker starts
        accepted_keys(settings.api_keys.get_secret_value(), settings.require_api_keys)
    except ApiKeysError as exc:
        raise SystemExit(f"readmission-api: {exc}") from None
    folder = multiproc_dir(settings)
    wipe(folder)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-c", GUNICORN_MASTER], gunicorn_environment(settings, folder))


def gunicorn_environment(settings: Settings, folder: Path) -> dict[str, str]:
    """The environment the gunicorn master and its forked workers start with.

    An operator's thread and MLflow knobs win over the defaults; the settings are `settings`;
    prometheus-client reads `PROMETHEUS_MULTIPROC_DIR` when first imported (in each worker) to
    choose multi-process mode.
    """
    settings = settings.model_copy(update={"prometheus_multiproc_dir": str(folder)})
    return {
        **SINGLE_THREAD_ENVIRONMENT,
        **MLFLOW_CLIENT_DEFAULTS,
        **os.environ,
        **settings_environment(settings),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }


def run_gunicorn() -> None:
    """The gunicorn master `serve` becomes: settings read once from the environment it was started with."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    _Gunicorn(Settings()).run()


if __name__ == "__main__":
    serve(get_settings())
