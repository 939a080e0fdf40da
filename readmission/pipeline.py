"""The steps of the `diabetes_pipeline` DAG: one function per task, no Airflow imports.

Each step takes the run's settings and a batch number (or the previous step's small dict)
and returns a small JSON-able dict for XCom: batch numbers, counts, ids, scores and the
step's duration, never rows. Those dicts are also what a run pushes as metrics.

Rows move between steps through durable stores only:
  * `fetch_batch` lands the batch exactly as the data API served it in the batch store
    (`readmission.batch_store`: `batches/<n>/raw.parquet` under DATA_DIR, or in the S3/MinIO
    bucket when BATCH_STORE=s3), and `store_raw` writes that landed copy to `diabetes_raw`;
  * `store_clean` reads the raw rows back, validates and cleans them once (`readmission.ingest`)
    and writes `diabetes_clean`; every later step reads the batch's clean rows, never the raw ones;
  * `export_batch` adds `batches/<n>/clean.parquet` next to the landed raw rows.

Every step is safe to re-run: stores are keyed by batch number and encounter id, objects are
overwritten with the same content, and a batch already trained on is not trained on again
unless `force_retrain` says so. The DAG translates two outcomes: `RunSkipped` (no source to
read) skips the run, `BatchRefused` (a batch that can never pass) fails it without retries.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, wraps
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.exceptions import MlflowException
from sqlalchemy.engine import make_url

from readmission import batch_store, evaluate, features, ingest, registry, schema, sources
from readmission import train as training
from readmission.config import Settings
from readmission.storage import Storage
from readmission.validation import SchemaError

log = logging.getLogger(__name__)

DAG_ID = "diabetes_pipeline"
DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
TASK_IDS = (
    "check_source",
    "fetch_batch",
    "store_raw",
    "store_clean",
    "export_batch",
    "score_batch",
    "train",
    "register",
    "promote",
    "notify_serving",
    "report_run",
)
RUNNING = "running"
RELOAD_TIMEOUT_SECONDS = 10.0
READY = ModelVersionStatus.to_string(ModelVersionStatus.READY)


class RunSkipped(RuntimeError):
    """Nothing to process this run: the instance is stopped, the data API is down or has served everything."""


class BatchRefused(RuntimeError):
    """The batch can never pass (wrong columns, unknown batch number): retrying would not help."""


def _timed(step: Callable[..., dict]) -> Callable[..., dict]:
    """Add the step's duration in seconds to the dict it returns."""

    @wraps(step)
    def timed(*args: Any, **kwargs: Any) -> dict:
        started = time.perf_counter()
        result = step(*args, **kwargs)
        return {**result, "seconds": round(time.perf_counter() - started, 3)}

    return timed


# --- settings of one run --------------------------------------------------------------------------


def mysqlclient_url(uri: str) -> str:
    """A MySQL URI (as `MySqlHook.get_uri()` gives it, any driver) on mysqlclient (`mysql+mysqldb`).

    mysqlclient is the driver the Airflow MySQL provider itself installs, and it parses results
    in C: reading the ~100k stored encounters to train on takes a quarter of PyMySQL's time.
    """
    return make_url(uri).set(drivername="mysql+mysqldb").render_as_string(hide_password=False)


def run_settings(settings: Settings, raw_db_uri: str | None = None, clean_db_uri: str | None = None,
                 force_retrain: bool = False) -> Settings:  # fmt: skip
    """The settings of one run: database URIs from Airflow connections when given, and the run's params."""
    update: dict[str, Any] = {"force_retrain": settings.force_retrain or force_retrain}
    if raw_db_uri:
        update["raw_db_url"] = mysqlclient_url(raw_db_uri)
    if clean_db_uri:
        update["clean_db_url"] = mysqlclient_url(clean_db_uri)
    return settings.model_copy(update=update)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as the environment variables `Settings()` reads back, for processes run on them."""
    environment = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        environment[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return environment


# --- the steps ---------------------------------------------------------------------------------------


@_timed
def check_source(settings: Settings) -> dict:
    """The EC2 instance runs (when EC2_INSTANCE_ID is set) and the data API answers; else RunSkipped."""
    state = None
    if settings.ec2_instance_id:
        from readmission.scheduler import ec2_instance_state

        state = ec2_instance_state(settings.ec2_instance_id, settings.aws_region)
        if state != RUNNING:
            raise RunSkipped(f"EC2 instance {settings.ec2_instance_id} is {state}, not {RUNNING}")
    if not sources.data_api_healthy(settings.data_api_url):
        raise RunSkipped(f"the data API at {settings.data_api_url} does not answer /health")
    log.info("source ready: data API %s answers, instance state %s", settings.data_api_url, state or "not checked")
    return {"instance_state": state, "data_api_url": settings.data_api_url}


@_timed
def fetch_batch(settings: Settings, batch: int | None = None) -> dict:
    """Fetch batch `batch` (None: the data API's current one) and land it as served in the batch store."""
    try:
        fetched = sources.fetch_batch(settings.data_api_url, batch, timeout=settings.data_api_timeout_seconds)
    except (sources.SourceUnavailable, sources.SourceExhausted) as exc:
        raise RunSkipped(str(exc)) from exc
    except LookupError as exc:
        raise BatchRefused(str(exc)) from exc
    location = batch_store.write_batch_file(settings, batch_store.batch_key(fetched.number, "raw"), fetched.rows)
    log.info("batch %d: %d rows fetched, landed at %s", fetched.number, fetched.size, location)
    return {"batch": fetched.number, "total_batches": fetched.total_batches, "rows_fetched": fetched.size}


@contextmanager
def _storage(settings: Settings) -> Iterator[Storage]:
    """The raw and clean stores of this run, their connections closed afterwards."""
    storage = Storage.from_settings(settings)
    try:
        yield storage
    finally:
        storage.dispose()


@_timed
def store_raw(settings: Settings, batch: int) -> dict:
    """Write the landed batch to `diabetes_raw` (replacing what the batch stored before)."""
    rows = batch_store.read_batch_file(settings, batch_store.batch_key(batch, "raw"))
    with _storage(settings) as storage:
        storage.create_schema()
        try:
            written = ingest.store_raw(storage, sources.Batch(batch, 0, rows), f"data-api:{settings.data_api_url}")
        except SchemaError as exc:
            raise BatchRefused(f"batch {batch}: {exc}") from exc
    log.info("batch %d: %d rows stored raw, %d quarantined", batch, written.stored, written.rejected)
    return {
        "batch": batch,
        "rows_received": written.received,
        "rows_stored_raw": written.stored,
        "rows_rejected_raw": written.rejected,
    }


@_timed
def store_clean(settings: Settings, batch: int) -> dict:
    """Validate and clean the batch's stored raw rows (once), then store the clean rows, the quarantined rows and
    the batch's final counts; BatchRefused, with nothing written, for a batch without one usable row."""
    with _storage(settings) as storage:
        try:
            cleaned = ingest.clean_stored_batch(storage, batch)
        except SchemaError as exc:
            raise BatchRefused(f"batch {batch}: {exc}") from exc
        if cleaned.clean.empty:
            rejected = cleaned.quarantined
            reasons = rejected["reason"].drop_duplicates().head(3).tolist() if len(rejected) else []
            raise BatchRefused(f"batch {batch} holds no valid row ({len(rejected)} rejected, e.g. {reasons})")
        counts = ingest.store_clean(storage, batch, cleaned)
    log.info("batch %d: %d rows stored clean, %d rejected in all", batch, counts.stored, counts.rejected)
    return {
        "batch": batch,
        "rows_received": counts.received,
        "rows_stored": counts.stored,
        "rows_rejected": counts.rejected,
    }


@_timed
def export_batch(settings: Settings, batch: int) -> dict:
    """Export the batch's clean rows as `batches/<n>/clean.parquet`, next to the raw rows landed by fetch_batch."""
    with _storage(settings) as storage:
        clean = storage.read_clean_batch(batch)
    location = batch_store.write_batch_file(settings, batch_store.batch_key(batch, "clean"), clean)
    log.info("batch %d: %d clean rows exported to %s", batch, len(clean), location)
    return {"batch": batch, "rows_exported": len(clean), "clean": location}


# --- the model steps ----------------------------------------------------------------------------------


def _figure(value: float | None) -> float | None:
    """A metric as XCom and JSON carry it: a float, or None for a missing or undefined (NaN) one."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _production(settings: Settings) -> dict | None:
    """The metadata of the `@production` version (see `registry.model_metadata`), or None when there is none yet."""
    try:
        return registry.model_metadata(f"models:/{settings.model_name}@{settings.model_alias}", settings)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _trained_batches(version: dict) -> set[int]:
    return {int(b) for b in version["tags"].get("lineage.batches", "").split(",") if b}


@_timed
def score_batch(settings: Settings, batch: int) -> dict:
    """Score the batch's clean encounters with the `@production` model before any training on them.

    Stores every prediction with the model version and returns the model's live ROC-AUC and
    accuracy on this unseen batch. Skipped (and said so) when there is no production model yet,
    or when it was trained on this batch already (a re-run): that would be no out-of-time check.
    """
    production = _production(settings)
    unscored = {"batch": batch, "model_version": None, "rows_scored": 0, "live_roc_auc": None, "live_accuracy": None}
    if production is None:
        log.info("batch %d: no @%s model yet, nothing to score", batch, settings.model_alias)
        return unscored
    version = production["version"]
    if batch in _trained_batches(production):
        log.info("batch %d: @%s version %s was trained on it, so it is not scored again", batch, settings.model_alias,
                 version)  # fmt: skip
        return unscored | {"model_version": version}
    model = registry.load_pipeline(f"models:/{settings.model_name}/{version}", settings)
    threshold = production["metrics"].get("decision_threshold", 0.5)
    with _storage(settings) as storage:
        rows = storage.read_clean_batch(batch)
        labels = features.target(rows[schema.TARGET_COLUMN], settings.target).to_numpy()
        probability = evaluate.positive_probability(model, rows)
        predictions = pd.DataFrame({"encounter_id": rows["encounter_id"].astype("int64"), "probability": probability,
                                    "prediction": (probability >= threshold).astype(int), "label": labels})  # fmt: skip
        stored = storage.write_predictions(batch, settings.model_name, version, predictions)
    live = evaluate.classification_metrics(labels, probability, threshold)
    log.info("batch %d: @%s version %s live ROC-AUC %.4f, accuracy %.4f on %d encounters", batch,
             settings.model_alias, version, live["roc_auc"], live["accuracy"], stored)  # fmt: skip
    return {"batch": batch, "model_version": version, "rows_scored": stored,
            "live_roc_auc": _figure(live["roc_auc"]), "live_accuracy": _figure(live["accuracy"])}  # fmt: skip


def _version_trained_on(settings: Settings, batches: list[int], train_fingerprint: str) -> str | None:
    """The registered version trained on exactly these batches and train rows for this target, if any."""
    wanted = {"lineage.batches": ",".join(map(str, batches)), "lineage.training_data_sha256": train_fingerprint,
              "target": settings.target}  # fmt: skip
    versions = registry.client(settings).search_model_versions(f"name = '{settings.model_name}'")
    matches = [v for v in versions if all((v.tags or {}).get(key) == value for key, value in wanted.items())]
    return str(max(int(v.version) for v in matches)) if matches else None


def _import_model_logging() -> None:
    """Import what logging a model takes (MLflow's python_function flavour, skops, matplotlib): seconds in
    the fresh process a task runs in."""
    import matplotlib.figure  # noqa: F401
    import mlflow.pyfunc  # noqa: F401
    import skops.io  # noqa: F401


@_timed
def train(settings: Settings, batch: int) -> dict:
    """Train on every clean batch stored so far and log the run with its model (see `readmission.train`).

    Not done again when a version trained on exactly the same rows exists, unless `force_retrain`.
    """
    warm_up = threading.Thread(target=_import_model_logging, name="warm-up", daemon=True)
    warm_up.start()  # while the database sends the rows
    with _storage(settings) as storage:
        frame = storage.labelled_encounters()
    batches = sorted(int(b) for b in frame["batch_number"].unique())
    existing = _version_trained_on(settings, batches, training.fingerprint(frame[frame["split"] == "train"]))
    if existing and not settings.force_retrain:
        log.info("batches %s were trained on already (version %s): not training again", batches, existing)
        return {"batch": batch, "trained": False, "version": existing, "batches": batches}
    result = training.train(frame, settings)
    version = registry.log_training(result, settings)
    metrics = result.evaluation.metrics
    return {"batch": batch, "trained": True, "version": str(version.version), "run_id": version.run_id,
            "batches": batches, "candidate": result.candidate, "training_rows": result.lineage.rows["train"],
            "validation_roc_auc": _figure(metrics.get("validation_roc_auc")),
            "test_roc_auc": _figure(metrics.get("test_roc_auc")), "training_seconds": round(result.seconds, 3)}  # fmt: skip


@_timed
def register(settings: Settings, trained: dict) -> dict:
    """Check the trained model's version is registered and ready (a retry waits for a pending one), and tag it
    with the batch whose run made it."""
    client = registry.client(settings)
    version = client.get_model_version(settings.model_name, trained["version"])
    if version.status != READY:
        raise RuntimeError(f"{settings.model_name} version {version.version} is {version.status}, not {READY}")
    if trained["trained"]:
        client.set_model_version_tag(settings.model_name, str(version.version), "pipeline.batch", str(trained["batch"]))
    return {"batch": trained["batch"], "version": str(version.version), "new_version": trained["trained"]}


@_timed
def promote(settings: Settings, registered: dict) -> dict:
    """Run the promotion gate (`registry.run_gate`) for a new version on the current test split."""
    batch, version = registered["batch"], registered["version"]
    if not registered["new_version"]:
        log.info("no new model this run: @%s stays where it is", settings.model_alias)
        return {"batch": batch, "version": version, "decision": "no_new_model", "promoted": False}
    with _storage(settings) as storage:
        test_rows = storage.labelled_encounters(["test"])
    gate = registry.run_gate(settings, version, test_rows)
    return {"batch": batch, "version": version, "decision": gate.decision, "promoted": gate.promoted,
            "challenger_roc_auc": _figure(gate.challenger_auc), "champion_roc_auc": _figure(gate.champion_auc),
            "champion_version": gate.champion_version}  # fmt: skip


@_timed
def notify_serving(settings: Settings, promoted: dict) -> dict:
    """Ask the inference service to reload its model after a promotion; a failure is a logged warning, never a
    failed run (the service also polls the registry on its own)."""
    if not promoted["promoted"]:
        log.info("@%s did not move: the inference service keeps its model", settings.model_alias)
        return {"batch": promoted["batch"], "notified": False}
    url = f"{settings.serving_url.rstrip('/')}/reload"
    headers = {"Authorization": f"Bearer {settings.reload_token.get_secret_value()}"}
    try:
        response = requests.post(url, headers=headers, timeout=RELOAD_TIMEOUT_SECONDS)
        response.raise_for_status()
    except requests.RequestException as exc:
        log.warning("the inference service was not reloaded (%s); it will pick the model up on its next poll", exc)
        return {"batch": promoted["batch"], "notified": False}
    log.info("the inference service at %s reloaded its model", settings.serving_url)
    return {"batch": promoted["batch"], "notified": True}


# --- running the DAG locally through Airflow --------------------------------------------------------


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Airflow's configuration for local runs: AIRFLOW_HOME and a SQLite metadata DB under DATA_DIR."""
    home = settings.data_dir.resolve() / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def load_dag():
    """The `diabetes_pipeline` DAG parsed from the dags folder; ImportError naming the problem if it does not parse."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS_FOLDER)
    if DAG_ID not in bag.dags:
        raise ImportError(f"{DAG_ID} not found in {DAGS_FOLDER}: {bag.import_errors}")
    return bag.dags[DAG_ID]


@dataclass(frozen=True)
class LocalRun:
    """One run of the DAG through `dag.test()`: each task's final state, and what the tasks returned."""

    states: dict[str, str]  # task id -> `success`, `skipped`, `failed`, ..., in the order the tasks run
    results: dict[str, Any]  # task id -> its XCom return value, for the tasks that returned one


def run_dag_locally(settings: Settings, batch: int | None = None, force_retrain: bool = False) -> LocalRun:
    """Run `diabetes_pipeline` once through Airflow itself (`dag.test()`), for `make demo`.

    The metadata DB is SQLite under `<data_dir>/airflow`, migrated on first use. The tasks run in
    this process on `settings` (exported to the environment, which they read). Airflow reads its own
    configuration when first imported, so call this before anything else imports airflow.
    """
    os.environ.update({**settings_environment(settings), **airflow_environment(settings)})
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
