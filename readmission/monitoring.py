"""Pipeline metrics: what each `diabetes_pipeline` run did, pushed to the Prometheus Pushgateway.

The DAG's tasks return small dicts (see `readmission.pipeline`); the run's last task hands
them to `report_run`, which adds the drift of the batch (PSI per feature against the training
profile of the model that scored it) and the age of the production model, and pushes it all
under the job `diabetes_pipeline`. A push replaces the previous run's figures, so the
Pushgateway always holds the last successful run and Prometheus keeps the history.

Every metric is named `diabetes_pipeline_*`; the alert rules and the Pipeline and Model
dashboards read these names. An empty `PUSHGATEWAY_URL` disables pushing (the figures are
logged instead), and a Pushgateway or MLflow that does not answer is a logged warning:
reporting never fails a run whose work is done.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from readmission import drift
from readmission.config import Settings

log = logging.getLogger(__name__)

JOB = "diabetes_pipeline"
PUSH_TIMEOUT_SECONDS = 10.0
DECISIONS = ("promoted", "kept_as_challenger", "refused", "no_new_model")
# (metric, task, key of the task's dict): the row counts of a run.
ROWS = (("fetched", "fetch_batch", "rows_fetched"), ("stored", "store_clean", "rows_stored"),
        ("rejected", "store_clean", "rows_rejected"), ("scored", "score_batch", "rows_scored"))  # fmt: skip
# (metric, task, key, help): single figures of a run, left out when the run has none (e.g. nothing to score).
FIGURES = (
    ("batch_number", "fetch_batch", "batch", "Number of the batch the last successful run processed."),
    ("batches_available", "fetch_batch", "total_batches", "Batches the data API serves in all."),
    ("live_roc_auc", "score_batch", "live_roc_auc", "ROC-AUC of the production model on the new batch, before "
     "training on it."),
    ("live_accuracy", "score_batch", "live_accuracy", "Accuracy of the production model on the new batch."),
    ("training_seconds", "train", "training_seconds", "Time to train the candidates and evaluate the best one."),
    ("training_rows", "train", "training_rows", "Rows of the train split the new model was trained on."),
)


def _number(value: Any) -> float | None:
    """A figure as a float; None for a missing or non-numeric one (None, text, booleans)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_registry(figures: dict[str, dict], psi: dict[str, float] | None = None,
                 production: dict[str, float] | None = None, finished: float | None = None) -> CollectorRegistry:
    """The metrics of one successful run, in a registry of their own.

    `figures` maps task ids to the dicts the tasks returned; `psi` is the batch's drift by
    feature; `production` is `production_model` after the run.
    """
    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{JOB}_{name}", documentation, labels, registry=registry)

    Gauge(f"{JOB}_last_success_timestamp_seconds", "When the last successful run finished (Unix time).",
          registry=registry).set(finished or time.time())  # fmt: skip
    for name, task, key, documentation in FIGURES:
        if (value := _number(figures.get(task, {}).get(key))) is not None:
            gauge(name, documentation).set(value)
    rows = gauge("rows", "Rows of the batch by stage: fetched, stored clean, rejected, scored.", ("stage",))
    for stage, task, key in ROWS:
        if (value := _number(figures.get(task, {}).get(key))) is not None:
            rows.labels(stage).set(value)
    durations = gauge("task_duration_seconds", "Time each task of the run took.", ("task",))
    for task, result in figures.items():
        if (seconds := _number(result.get("seconds"))) is not None:
            durations.labels(task).set(seconds)
    _promotion(gauge, figures.get("promote", {}))
    if psi:
        drifts = gauge("feature_psi", "PSI of the batch against the scoring model's training data, by feature.",
                       ("feature",))  # fmt: skip
        for feature, value in psi.items():
            drifts.labels(feature).set(value)
    if production:
        gauge("production_model_version", "Version of the model holding the production alias.").set(
            production["version"])
        gauge("production_model_created_timestamp_seconds", "When the production version was registered.").set(
            production["created"])
    return registry


def _promotion(gauge, promoted: dict) -> None:
    """The gate's decision (1 for the run's, 0 for the others) and the two scores it compared."""
    if not promoted.get("decision"):
        return
    decisions = gauge("promotion_decision", "1 for the promotion gate's decision of the last run, 0 otherwise.",
                      ("decision",))  # fmt: skip
    for decision in dict.fromkeys((*DECISIONS, promoted["decision"])):
        decisions.labels(decision).set(float(decision == promoted["decision"]))
    scores = gauge("gate_roc_auc", "ROC-AUC of the challenger and of the champion on the same test split.", ("model",))
    for model in ("challenger", "champion"):
        if (value := _number(promoted.get(f"{model}_roc_auc"))) is not None:
            scores.labels(model).set(value)


def push_run_metrics(settings: Settings, figures: dict[str, dict], psi: dict[str, float] | None = None,
                     production: dict[str, float] | None = None) -> bool:  # fmt: skip
    """Push one run's metrics to `settings.pushgateway_url` (replacing the previous run's); False when
    disabled or refused (logged, never raised)."""
    registry = run_registry(figures, psi, production)
    if not settings.pushgateway_url:
        log.info("PUSHGATEWAY_URL is empty, metrics not pushed: %s", figures)
        return False
    try:
        push_to_gateway(settings.pushgateway_url, job=JOB, registry=registry, timeout=PUSH_TIMEOUT_SECONDS)
    except OSError as exc:  # URLError, connection refused, timeouts
        log.warning("the run's metrics were not pushed to %s: %s", settings.pushgateway_url, exc)
        return False
    log.info("run metrics pushed to %s (job %s)", settings.pushgateway_url, JOB)
    return True


def batch_drift(settings: Settings, batch: int, model_version: str) -> dict[str, float]:
    """PSI by feature of every row the batch brought (`diabetes_raw`) against the training profile logged
    with `model_version`; empty when that version carries no profile."""
    from readmission.storage import Storage

    profile = drift.profile_of_model(f"models:/{settings.model_name}/{model_version}", settings.mlflow_tracking_uri)
    if profile is None:
        log.info("version %s was logged without a reference profile: no drift for batch %d", model_version, batch)
        return {}
    storage = Storage.from_settings(settings)
    try:
        rows = storage.read_raw_batch(batch)
    finally:
        storage.dispose()
    return drift.batch_psi(profile, rows) if len(rows) else {}


def production_model(settings: Settings) -> dict[str, float]:
    """The version holding `@production` and when it was registered (Unix seconds)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, settings.model_alias)
    return {"version": float(version.version), "created": version.creation_timestamp / 1000}


def _attempt(what: str, read):
    """`read()`, or None when it fails: MLflow or a database being down must not stop the push."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - whatever the failure, the rest of the figures still get pushed
        log.warning("%s could not be read (%s: %s); pushing the other figures", what, type(exc).__name__, exc)
        return None


def report_run(settings: Settings, figures: dict[str, dict]) -> dict[str, Any]:
    """The run's last step: measure the batch's drift, look up the production model, push everything.

    `figures` maps the DAG's task ids to what they returned. Drift is measured against the
    model that scored the batch (`score_batch`'s `model_version`); none when nothing scored it.
    """
    figures = {task: result for task, result in figures.items() if isinstance(result, dict)}  # no XCom: None
    batch = figures.get("fetch_batch", {}).get("batch")
    scorer = figures.get("score_batch", {}).get("model_version")
    psi = {}
    if batch and scorer:
        psi = _attempt("the batch's drift", lambda: batch_drift(settings, int(batch), str(scorer))) or {}
    production = _attempt("the production model", lambda: production_model(settings))
    pushed = push_run_metrics(settings, figures, psi, production)
    drifted = sorted(feature for feature, value in psi.items() if value > drift.SIGNIFICANT_PSI)
    return {"batch": batch, "pushed": pushed, "drift": psi, "drifted_features": drifted}
