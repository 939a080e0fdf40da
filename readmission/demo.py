"""`make demo`: the whole platform on embedded defaults, on one machine.

Starts the data API on DATASET_PATH (or, when the data set cannot be loaded, on a synthetic
look-alike, with a warning), runs the Airflow DAG once per batch through `dag.test()`, prints
what landed, then serves the production model and the clinician UI until Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from readmission.config import Settings
from readmission.dataset import DatasetError, iter_dataset_chunks, write_synthetic_csv

SYNTHETIC_ROWS = 45_000  # three batches of the default size: enough to watch promotion happen


def resolve_dataset(settings: Settings) -> str:
    """DATASET_PATH when it can be read; otherwise a synthetic data set under DATA_DIR, with a warning."""
    try:
        next(iter_dataset_chunks(settings.dataset_path, 10))
        return settings.dataset_path
    except (DatasetError, OSError, ValueError) as exc:
        path = settings.data_dir.resolve() / "synthetic_diabetic_data.csv.gz"
        print(f"WARNING: cannot load the data set ({exc}).\nWARNING: falling back to synthetic data: {path}")
        if not path.exists():
            write_synthetic_csv(path, rows=SYNTHETIC_ROWS, seed=1)
        return str(path)


def _start(args: list[str], env: dict[str, str], log_name: str, ready_url: str, settings: Settings,
           timeout: float = 180.0) -> subprocess.Popen:  # fmt: skip
    """Start a server process, its output in DATA_DIR/logs, and wait until `ready_url` answers."""
    logs = settings.data_dir.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / log_name).open("ab")
    process = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {process.returncode}; see {logs / log_name}")
        try:
            if requests.get(ready_url, timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"{ready_url} did not answer within {timeout:.0f}s; see {logs / log_name}")


def _summary(settings: Settings) -> str:
    """Batches stored and the production model's test metrics, as printable text."""
    from readmission import registry
    from readmission.storage import Storage

    batch_log = Storage.from_settings(settings).batch_log()
    lines = ["", "=== Batches ===", batch_log.drop(columns=["checksum"], errors="ignore").to_string(index=False)]
    try:
        meta = registry.model_metadata(settings=settings)
        metrics = {k: v for k, v in meta.get("metrics", {}).items() if k.startswith("test_")}
        lines += ["", f"=== Production model: {meta['name']} version {meta['version']} ===",
                  *(f"  {name:<22} {value:.4f}" for name, value in sorted(metrics.items()))]  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the summary reports, it does not fail the demo
        lines += ["", f"no production model yet ({exc})"]
    return "\n".join(lines)


def run(settings: Settings) -> int:
    """The demo: data API -> one DAG run per batch -> summary -> inference API + UI until Ctrl-C."""
    from readmission import pipeline

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    dataset = resolve_dataset(settings)
    bin_dir = Path(sys.executable).parent
    data_api = _start([str(bin_dir / "readmission"), "data-api"], {"DATASET_PATH": dataset}, "data_api.log",
                      f"{settings.data_api_url}/health", settings)  # fmt: skip
    processes = [data_api]
    try:
        total = requests.get(f"{settings.data_api_url}/health", timeout=10).json()["total_batches"]
        print(f"data API: {settings.data_api_url} serves {total} batches of up to {settings.batch_size} rows")
        for batch in range(1, total + 1):
            states = pipeline.run_dag_locally(settings, batch)
            print(f"batch {batch}: " + ", ".join(f"{task}={state}" for task, state in states.items()))
        print(_summary(settings))

        api = _start([sys.executable, "-m", "readmission", "serve"], {}, "inference_api.log",
                     f"http://{settings.api_host}:{settings.api_port}/ready", settings)  # fmt: skip
        processes.append(api)
        from readmission import ui

        processes.append(ui.serve(settings, settings.data_dir.resolve() / "logs" / "ui.log"))
        print(f"\ninference API: http://{settings.api_host}:{settings.api_port}/docs")
        print(f"clinician UI:  {ui.ui_url(settings)}")
        print("Ctrl-C stops everything.")
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in reversed(processes):
            process.terminate()
