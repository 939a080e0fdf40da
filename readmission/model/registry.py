"""MLflow: log a training run and register its model; load, describe, list and move registered versions.

Tracking and registry URI: `settings.mlflow_tracking_uri` (MLFLOW_TRACKING_URI), given to every
client explicitly (`production.registry_client`); MLflow's process-wide URIs are never set. Its
embedded default is a SQLite file under DATA_DIR; the experiment is then created with its
artifacts under `settings.artifacts_dir`, not in a `./mlruns` of whatever the working directory
is. Against an `mlflow server` the server decides where artifacts go (its
`--artifacts-destination`, MinIO in production).

`@production` moves through aliases only, never registry stages: by the promotion gate
(`readmission.model.gate`), or by hand (`set_production`, `rollback`). Every move records the
version it replaced (`tags.PREVIOUS_CHAMPION`), which is what `rollback` goes back to.

How a model is packaged (an MLflow python_function model holding a skops pipeline, never a
pickle) is `readmission.mlflow_model`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow.artifacts
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from sklearn.pipeline import Pipeline

from readmission import drift, mlflow_model
from readmission.config import Settings
from readmission.evaluate import THRESHOLD_RULE
from readmission.model import tags
from readmission.model.production import MODEL_URI, model_files, production_version, registry_client, version_of_uri
from readmission.train import TrainingResult

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
GROUP_ARTIFACT = "group_metrics.json"  # evaluate.group_table of the test split
LOCAL_TRACKING_SCHEMES = ("sqlite", "file", "mysql", "postgresql", "mssql")  # the client writes artifacts itself


class RegistryError(LookupError):
    """A registry operation that cannot be done as asked (no such version, nothing to roll back to)."""


@dataclass(frozen=True)
class AliasMove:
    """`@production` moved from `previous` to `version`."""

    version: str
    previous: str | None
    alias: str

    def __str__(self) -> str:
        return f"@{self.alias} -> version {self.version} (was {self.previous or 'unset'})"


def score_text(value: float | None) -> str:
    """A score as a tag value: six decimals, or "none"."""
    return "none" if value is None else f"{value:.6f}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def experiment_id(settings: Settings, client: MlflowClient | None = None) -> str:
    """The id of `settings.mlflow_experiment`, created (or restored) if needed; local stores keep artifacts in artifacts_dir."""
    client = client or registry_client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        location = None
        if settings.mlflow_tracking_uri.split(":", 1)[0].split("+", 1)[0] in LOCAL_TRACKING_SCHEMES:
            settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
            location = settings.artifacts_dir.as_uri()
        try:
            return client.create_experiment(settings.mlflow_experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(settings.mlflow_experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


# --- logging and registering ------------------------------------------------------------------------


def group_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """`evaluate.group_table` as JSON-ready records (null for a group too small to score)."""
    return [
        {key: (None if isinstance(value, float) and np.isnan(value) else value) for key, value in row.items()}
        for row in table.to_dict(orient="records")
    ]


def log_training(result: TrainingResult, settings: Settings) -> ModelVersion:
    """Log a training run (params, metrics, figures, lineage, the model) and register it as a new version."""
    client = registry_client(settings)
    run_tags = {
        tags.TARGET: result.target,
        tags.CANDIDATE: result.candidate,
        tags.THRESHOLD_RULE: THRESHOLD_RULE,
        **result.lineage.tags(),
    }
    run = client.create_run(
        experiment_id(settings, client), run_name=f"{result.candidate}-{result.target}", tags=run_tags
    )
    run_id = run.info.run_id
    try:
        _log_figures(client, run_id, result)
        logged = _log_model(client, run, result)
        version = _register(client, settings.model_name, logged, run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    version_tags = {
        **run_tags,
        tags.RUN_ID: run_id,
        tags.TEST_ROC_AUC: score_text(result.evaluation.metrics.get("test_roc_auc")),
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    log.info("run %s registered as %s version %s", run_id, settings.model_name, version)
    return client.get_model_version(settings.model_name, version)


def _log_figures(client: MlflowClient, run_id: str, result: TrainingResult) -> None:
    """The run's params, metrics, figures, feature importances and group table."""
    params = {f"classifier.{k}" if k != "classifier" else k: v for k, v in result.params.items()}
    params |= {"target": result.target, "candidates": len(result.search)}
    metrics = result.evaluation.metrics | {"training_seconds": result.seconds}
    metrics |= {f"search.{name}.validation_roc_auc": auc for name, auc in result.search.items()}
    metrics |= {f"search.{name}.fit_seconds": seconds for name, seconds in result.fit_seconds.items()}
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), stamp, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
    )
    for name, figure in result.evaluation.figures.items():
        client.log_figure(run_id, figure, f"plots/{name}")
    if result.evaluation.importances:
        client.log_dict(run_id, result.evaluation.importances, "feature_importance.json")
    if result.evaluation.groups is not None:
        # A list of records is valid JSON for log_dict, though MLflow types it as a dict.
        client.log_dict(run_id, group_records(result.evaluation.groups), GROUP_ARTIFACT)  # type: ignore[arg-type]


def _log_model(client: MlflowClient, run: Any, result: TrainingResult) -> LoggedModel:
    """Package the model (`mlflow_model.save_model`) as a logged model of `run`."""
    from mlflow.models import Model

    run_id = run.info.run_id
    logged = client.create_logged_model(run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id)
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        metadata = drift.profile_metadata(result.reference_profile) if result.reference_profile else None
        description = Model(artifact_path=logged.artifact_location, run_id=run_id, model_id=logged.model_id)
        with tempfile.TemporaryDirectory(prefix="logged-model-") as folder:
            path = Path(folder) / MODEL_ARTIFACT
            mlflow_model.save_model(
                result.model, path, result.input_example, metadata=metadata, mlflow_model=description
            )
            client.log_model_artifacts(logged.model_id, str(path))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)


def _register(client: MlflowClient, name: str, logged: LoggedModel, run_id: str) -> str:
    """Register `logged` as a new version of `name` (created if needed); the version number.

    The version's source is the logged model's artifact location, not its `models:/<model id>` URI:
    MLflow's SQL registry resolves such a URI with a client on the process-wide tracking URI."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id
    )
    return str(version.version)


# --- loading and describing -------------------------------------------------------------------------


def load_pipeline(settings: Settings, uri: str | None = None) -> Pipeline:
    """The scikit-learn pipeline at `uri` (default `settings.model_uri`): `models:/name@alias`, `models:/name/N`,
    a run's model or a folder; read through skops' allow-list (`mlflow_model.read_pipeline`), never unpickled."""
    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_files(uri or settings.model_uri, settings),
            dst_path=folder,
            tracking_uri=settings.mlflow_tracking_uri,
        )
        return mlflow_model.read_pipeline(local)


def describe_version(settings: Settings, uri: str | None = None) -> dict[str, Any] | None:
    """Name, version, aliases, run id, the run's metrics and the version's tags of a registered model URI
    (default `settings.model_uri`); None when the URI names no version (an alias nobody holds yet).

    A path or a run's model has no registry entry: its card holds the URI alone."""
    uri = uri or settings.model_uri
    if not MODEL_URI.match(uri):
        return {"uri": uri, "name": None, "version": None, "alias": None, "run_id": None, "metrics": {}, "tags": {}}
    client = registry_client(settings)
    version = version_of_uri(uri, settings, client)
    if version is None:
        return None
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    held = aliases(client, version.name)
    return {
        "uri": uri,
        "name": version.name,
        "version": str(version.version),
        "alias": match["alias"] if (match := MODEL_URI.match(uri)) else None,
        "aliases": sorted(alias for alias, number in held.items() if number == str(version.version)),
        "run_id": version.run_id,
        "source": version.source,
        "created": _timestamp(version.creation_timestamp),
        "metrics": dict(metrics),
        "tags": dict(version.tags or {}),
    }


def _timestamp(milliseconds: int | None) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds") if milliseconds else ""


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of a registered model (searching versions does not return their aliases)."""
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


# --- moving `@production` ---------------------------------------------------------------------------


def move_production(client: MlflowClient, settings: Settings, version: str, how: str) -> AliasMove:
    """Point `@production` at `version`, recording the version it replaces for `rollback`."""
    name = settings.model_name
    champion = production_version(settings, client)
    previous = str(champion.version) if champion else None
    if previous and previous != version:
        client.set_model_version_tag(name, version, tags.PREVIOUS_CHAMPION, previous)
    client.set_registered_model_alias(name, settings.model_alias, version)
    client.set_model_version_tag(name, version, tags.PROMOTED_AT, now())
    client.set_model_version_tag(name, version, tags.PROMOTED_BY, how)
    if aliases(client, name).get(settings.challenger_alias) == version:
        client.delete_registered_model_alias(name, settings.challenger_alias)
    return AliasMove(version, previous, settings.model_alias)


def _existing_version(client: MlflowClient, settings: Settings, version: str) -> ModelVersion:
    try:
        return client.get_model_version(settings.model_name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{settings.model_name} has no version {version}") from exc


def set_production(settings: Settings, version: str | int) -> AliasMove:
    """Move `@production` to `version` by hand (no gate), remembering the champion it replaces."""
    client = registry_client(settings)
    version = str(_existing_version(client, settings, str(version)).version)
    return move_production(client, settings, version, "manual")


def rollback(settings: Settings) -> AliasMove:
    """Move `@production` back to the champion the current one replaced."""
    client = registry_client(settings)
    current = production_version(settings, client)
    if current is None:
        raise RegistryError(f"{settings.model_name} has no @{settings.model_alias} version to roll back from")
    previous = (current.tags or {}).get(tags.PREVIOUS_CHAMPION)
    if not previous:
        raise RegistryError(f"version {current.version} replaced no earlier champion: nothing to roll back to")
    _existing_version(client, settings, previous)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, previous)
    client.set_model_version_tag(settings.model_name, str(current.version), tags.ROLLED_BACK_AT, now())
    return AliasMove(previous, str(current.version), settings.model_alias)


# --- listing ----------------------------------------------------------------------------------------


def list_versions(settings: Settings) -> pd.DataFrame:
    """Every version of the registered model, newest first: aliases, target, test ROC-AUC, gate decision, run."""
    client = registry_client(settings)
    columns = ["version", "aliases", "created", "candidate", "target", "test_roc_auc", "gate_decision", "run_id"]
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    held: dict[str, list[str]] = {}
    if versions:
        for alias, version in sorted(aliases(client, settings.model_name).items()):
            held.setdefault(version, []).append(alias)
    rows = [
        {
            "version": int(v.version),
            "aliases": ",".join(held.get(str(v.version), [])),
            "created": _timestamp(v.creation_timestamp),
            "candidate": v.tags.get(tags.CANDIDATE, ""),
            "target": v.tags.get(tags.TARGET, ""),
            "test_roc_auc": v.tags.get(tags.GATE_CHALLENGER_ROC_AUC, v.tags.get(tags.TEST_ROC_AUC, "")),
            "gate_decision": v.tags.get(tags.GATE_DECISION, ""),
            "run_id": v.run_id,
        }
        for v in versions
    ]
    return pd.DataFrame(rows, columns=columns).sort_values("version", ascending=False, ignore_index=True)


def versions_table(settings: Settings) -> str:
    """`list_versions` as a printable table (`readmission model list`)."""
    versions = list_versions(settings)
    if versions.empty:
        return f"no version of {settings.model_name} registered yet"
    return versions.replace({"aliases": {"": "-"}, "gate_decision": {"": "-"}}).to_string(index=False)


def version_trained_on(settings: Settings, batches: list[int], train_fingerprint: str) -> str | None:
    """The newest registered version trained on exactly these batches and train rows for this target, if any."""
    wanted = {
        tags.LINEAGE_BATCHES: ",".join(map(str, batches)),
        tags.LINEAGE_TRAINING_DATA_SHA256: train_fingerprint,
        tags.TARGET: settings.target,
    }
    versions = registry_client(settings).search_model_versions(f"name = '{settings.model_name}'")
    matches = [v for v in versions if all((v.tags or {}).get(key) == value for key, value in wanted.items())]
    return str(max(int(v.version) for v in matches)) if matches else None


def describe_production(settings: Settings) -> dict[str, Any] | None:
    """`describe_version` of the version holding `@production`, or None when no version does yet."""
    return describe_version(settings, f"models:/{settings.model_name}@{settings.model_alias}")
