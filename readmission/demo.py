"""`make demo`: the whole platform on embedded defaults, on one machine.

Starts the data API on DATASET_PATH (or, when the data set cannot be read, on a synthetic
look-alike, with a warning that says so), the inference API and the clinician UI; then runs the
Airflow DAG once per batch through `dag.test()`, printing one line per batch, and ends with a
table of the batches and the addresses. Every promotion reaches the running inference API
through `/reload`. Airflow's and MLflow's own logs go to files under DATA_DIR/logs.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests
from pydantic import SecretStr

from readmission import processes
from readmission.config import Settings

DEMO_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class BatchOutcome:
    """What one DAG run did with one batch, as the demo reports it."""

    batch: int
    states: dict[str, str]
    rows_stored: int | None
    scored_by: str | None  # the version in service that scored the batch before training on it
    live_roc_auc: float | None
    version: str | None  # the version trained on the batches so far
    decision: str
    seconds: float

    @classmethod
    def of(cls, batch: int, run, seconds: float) -> BatchOutcome:
        results: dict[str, Any] = {task: result or {} for task, result in run.results.items()}
        failed = [task for task, state in run.states.items() if state not in ("success", "skipped")]
        promote = results.get("promote", {})
        if failed:
            decision = f"failed at {failed[0]}"
        elif set(run.states.values()) == {"skipped"}:
            decision = "skipped: the data API did not answer"
        else:
            decision = promote.get("decision", "no_new_model").replace("_", " ")
            if results.get("notify_serving", {}).get("notified"):
                decision += ", API reloaded"
        return cls(
            batch=batch,
            states=run.states,
            rows_stored=results.get("store_clean", {}).get("rows_stored"),
            scored_by=results.get("score_batch", {}).get("model_version"),
            live_roc_auc=results.get("score_batch", {}).get("live_roc_auc"),
            version=results.get("train", {}).get("version"),
            decision=decision,
            seconds=seconds,
        )

    def line(self, total: int) -> str:
        stored = f"{self.rows_stored:>6,} rows stored" if self.rows_stored is not None else "no rows stored"
        if self.live_roc_auc is not None:
            live = f"live ROC-AUC of v{self.scored_by} {self.live_roc_auc:.3f}"
        else:
            live = "no model in service to score it" if self.scored_by is None else f"v{self.scored_by} trained on it"
        trained = f"model v{self.version}" if self.version else "no model"
        return f"batch {self.batch}/{total}: {stored} | {live} | {trained} {self.decision} | {self.seconds:.0f} s"

    def row(self) -> dict[str, str]:
        return {
            "batch": str(self.batch),
            "rows stored": f"{self.rows_stored:,}" if self.rows_stored is not None else "-",
            "scored by": f"v{self.scored_by}" if self.scored_by else "-",
            "live ROC-AUC": f"{self.live_roc_auc:.3f}" if self.live_roc_auc is not None else "-",
            "model": f"v{self.version}" if self.version else "-",
            "decision": self.decision,
        }


def table(rows: list[dict[str, str]]) -> str:
    """Rows of text as an aligned table with a header."""
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in rows[0]}
    lines = ["  ".join(column.ljust(width) for column, width in widths.items())]
    lines += ["  ".join(row[column].ljust(width) for column, width in widths.items()) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


@contextmanager
def output_to(log_path: Path) -> Iterator[TextIO]:
    """Send everything this process and its children write to stdout and stderr to `log_path`; yields the terminal.

    Airflow and MLflow log to the standard streams (and set their handlers up as they please), so
    the demo moves the streams themselves and keeps its own lines for the terminal.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
            terminal.close()


def _mlflow_logs_to(log_path: Path) -> None:
    """MLflow's own logger writes to `log_path` (it is set up with a handler of its own, to stderr)."""
    import mlflow  # noqa: F401 - sets its logger up

    logger = logging.getLogger("mlflow")
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers = [handler]
    logger.propagate = False


def _production_summary(settings: Settings) -> str:
    from readmission.model import registry

    try:
        meta = registry.describe_version(settings)
    except Exception as exc:  # noqa: BLE001 - the summary reports, it does not fail the demo
        return f"no production model ({type(exc).__name__}: {exc})"
    if meta is None:
        return f"no production model (no version holds {settings.model_uri})"
    metrics = meta.get("metrics", {})
    figures = ", ".join(
        f"{name.removeprefix('test_')} {metrics[name]:.3f}"
        for name in ("test_roc_auc", "test_pr_auc", "test_brier")
        if name in metrics
    )
    return f"{meta['name']} v{meta['version']} @{settings.model_alias} (test {figures})"


def run(settings: Settings) -> int:
    """The demo: data API, inference API and UI up -> one DAG run per batch -> the table -> serve until Ctrl-C."""
    from readmission import local_run, ui
    from readmission.config import settings_environment
    from readmission.model import registry

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processes.stop_on_sigterm()
    if not settings.reload_token.get_secret_value():  # so that each promotion reaches the API through /reload
        settings = settings.model_copy(update={"reload_token": SecretStr(secrets.token_urlsafe(24))})
    # `/reload` reloads the worker that answers it; the API's other workers follow at their next poll of the registry.
    settings = settings.model_copy(update={"model_poll_seconds": min(settings.model_poll_seconds, DEMO_POLL_SECONDS)})
    logs = processes.logs_dir(settings)
    _mlflow_logs_to(logs / "mlflow.log")
    registry.experiment_id(settings)  # the embedded MLflow store exists before the API's workers open it
    started: list = []
    try:
        data_api, dataset, warning = processes.start_data_api(settings)
        started += [data_api] if data_api else []
        if warning:
            print(warning)
        total = requests.get(f"{settings.data_api_url}/health", timeout=10).json()["total_batches"]
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        started.append(
            processes.start(
                [str(processes.BIN_DIR / "readmission"), "serve"],
                settings_environment(settings),
                "inference_api.log",
                f"{api_url}/health",
                settings,
            )
        )
        started.append(
            processes.wait_ready(
                ui.serve(settings, logs / "ui.log"), f"{ui.ui_url(settings)}/_stcore/health", logs / "ui.log"
            )
        )
        print(
            f"data API      {settings.data_api_url}  serves {dataset}: {total} batches of up to {settings.batch_size:,} rows"
        )
        print(f"inference API {api_url}/docs  (reloads its model after each promotion)")
        print(f"clinician UI  {ui.ui_url(settings)}")
        print(f"running the Airflow DAG diabetes_pipeline once per batch; Airflow's log: {logs / 'airflow.log'}\n")

        outcomes = []
        with output_to(logs / "airflow.log") as terminal:
            batches = list(range(1, total + 1))
            began = time.monotonic()
            for batch, run in zip(batches, local_run.run_dag_locally(settings, batches), strict=True):
                outcome = BatchOutcome.of(batch, run, time.monotonic() - began)
                outcomes.append(outcome)
                print(outcome.line(total), file=terminal)
                began = time.monotonic()
        print("\n" + table([outcome.row() for outcome in outcomes]))
        print(f"\nin service: {_production_summary(settings)}")
        print(f"\ninference API {api_url}/docs")
        print(f"clinician UI  {ui.ui_url(settings)}")
        print(f"logs          {', '.join(sorted(path.name for path in logs.glob('*.log')))} in {logs}")
        print("Ctrl-C stops everything.")
        while all(process.poll() is None for process in started):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        processes.stop(started)
