"""MLflow: log a training run, register the model, and move the `@production` alias through a gate.

Tracking and registry URI: `settings.mlflow_tracking_uri` (MLFLOW_TRACKING_URI). Its embedded
default is a SQLite file under DATA_DIR; the experiment is then created with its artifacts
under `settings.artifacts_dir`, not in a `./mlruns` of whatever the working directory is.
Against an `mlflow server` the server decides where artifacts go (its
`--artifacts-destination`, MinIO in production).

Promotion uses aliases only, never registry stages. The gate scores the challenger and the
current champion on the same current test split and writes its decision and both scores as
tags of the challenger's version. Every promotion records the version it replaced
(`previous_champion`), which is what `rollback` goes back to.

How a model is packaged (an MLflow python_function model holding a skops pipeline, never a
pickle) is `readmission.mlflow_model`.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from readmission import drift, evaluate, mlflow_model, schema
from readmission.config import Settings
from readmission.evaluate import THRESHOLD_RULE, positive_probability
from readmission.features import target
from readmission.train import Candidate, TrainingResult, train

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
GROUP_ARTIFACT = "group_metrics.json"  # evaluate.group_table of the test split
LOCAL_TRACKING_SCHEMES = ("sqlite", "file", "mysql", "postgresql", "mssql")  # the client writes artifacts itself

PROMOTED, KEPT, REFUSED = "promoted", "kept_as_challenger", "refused"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class RegistryError(LookupError):
    """A registry operation that cannot be done as asked (no such version, nothing to roll back to)."""


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided for a challenger version, and why."""

    version: str
    decision: str  # PROMOTED, KEPT or REFUSED
    alias: str  # the alias the challenger holds now ("" for none)
    challenger_auc: float | None
    champion_version: str | None
    champion_auc: float | None
    reason: str

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def tags(self) -> dict[str, str]:
        """The decision as version tags."""
        return {"gate.decision": self.decision, "gate.reason": self.reason,
                "gate.challenger_roc_auc": _text(self.challenger_auc), "gate.champion_roc_auc": _text(self.champion_auc),
                "gate.champion_version": self.champion_version or "none"}  # fmt: skip

    def __str__(self) -> str:
        holds = f" (@{self.alias})" if self.alias else ""
        return f"version {self.version}: {self.decision}{holds}: {self.reason}"


@dataclass(frozen=True)
class AliasMove:
    """`@production` moved from `previous` to `version`."""

    version: str
    previous: str | None
    alias: str

    def __str__(self) -> str:
        return f"@{self.alias} -> version {self.version} (was {self.previous or 'unset'})"


def _text(value: float | None) -> str:
    return "none" if value is None else f"{value:.6f}"


# --- connection ------------------------------------------------------------------------------------


def client(settings: Settings) -> MlflowClient:
    """A client of the tracking server and registry at `settings.mlflow_tracking_uri` (also set for mlflow.*)."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        settings.data_dir.resolve().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings) -> str:
    """The id of `settings.mlflow_experiment`, created (or restored) if needed; local stores keep artifacts in artifacts_dir."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        location = None
        if settings.mlflow_tracking_uri.split(":", 1)[0].split("+", 1)[0] in LOCAL_TRACKING_SCHEMES:
            settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
            location = settings.artifacts_dir.as_uri()
        try:
            return mlflow_client.create_experiment(settings.mlflow_experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


# --- logging and registering ------------------------------------------------------------------------


def log_training(result: TrainingResult, settings: Settings) -> ModelVersion:
    """Log a training run (params, metrics, figures, lineage, the model) and register it as a new version."""
    mlflow_client = client(settings)
    tags = {"target": result.target, "candidate": result.candidate, "threshold_rule": THRESHOLD_RULE,
            **result.lineage.tags()}  # fmt: skip
    with mlflow.start_run(experiment_id=experiment_id(settings), run_name=f"{result.candidate}-{result.target}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params({f"classifier.{k}" if k != "classifier" else k: v for k, v in result.params.items()}
                          | {"target": result.target, "candidates": len(result.search)})  # fmt: skip
        mlflow.log_metrics(result.evaluation.metrics | {"training_seconds": result.seconds}
                           | {f"search.{name}.validation_roc_auc": auc for name, auc in result.search.items()}
                           | {f"search.{name}.fit_seconds": sec for name, sec in result.fit_seconds.items()})  # fmt: skip
        for name, figure in result.evaluation.figures.items():
            mlflow.log_figure(figure, f"plots/{name}")
        if result.evaluation.importances:
            mlflow.log_dict(result.evaluation.importances, "feature_importance.json")
        if result.evaluation.groups is not None:
            mlflow.log_dict(group_records(result.evaluation.groups), GROUP_ARTIFACT)
        info = mlflow_model.log_model(
            result.model,
            result.input_example,
            name=MODEL_ARTIFACT,
            registered_model_name=settings.model_name,
            metadata=drift.model_metadata(result.reference_profile) if result.reference_profile else None,
        )
    version = str(info.registered_model_version)
    for key, value in {**tags, "run_id": run.info.run_id,
                       "test_roc_auc": _text(result.evaluation.metrics.get("test_roc_auc"))}.items():  # fmt: skip
        mlflow_client.set_model_version_tag(settings.model_name, version, key, value)
    log.info("run %s registered as %s version %s", run.info.run_id, settings.model_name, version)
    return mlflow_client.get_model_version(settings.model_name, version)


# --- loading ---------------------------------------------------------------------------------------


def load_pipeline(uri: str | None = None, settings: Settings | None = None) -> Pipeline:
    """The scikit-learn pipeline at `uri` (default `settings.model_uri`): `models:/name@alias`, `models:/name/N`,
    a run's model or a folder; read through skops' allow-list (`mlflow_model.read_pipeline`), never unpickled."""
    from readmission.config import get_settings

    settings = settings or get_settings()
    client(settings)
    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri or settings.model_uri, dst_path=folder,
                                                    tracking_uri=settings.mlflow_tracking_uri)  # fmt: skip
        return mlflow_model.read_pipeline(local)


def model_metadata(uri: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Name, version, aliases, run id, the run's metrics and the version's tags of a registered model URI."""
    from readmission.config import get_settings

    settings = settings or get_settings()
    uri = uri or settings.model_uri
    match = MODEL_URI.match(uri)
    if not match:
        return {"uri": uri, "name": None, "version": None, "alias": None, "run_id": None, "metrics": {}, "tags": {}}
    mlflow_client = client(settings)
    name, alias = match["name"], match["alias"]
    version = (mlflow_client.get_model_version_by_alias(name, alias) if alias
               else mlflow_client.get_model_version(name, match["version"]))  # fmt: skip
    metrics = mlflow_client.get_run(version.run_id).data.metrics if version.run_id else {}
    return {"uri": uri, "name": name, "version": str(version.version), "alias": alias,
            "aliases": sorted(a for a, v in _aliases(mlflow_client, name).items() if v == str(version.version)),
            "run_id": version.run_id, "source": version.source,
            "created": _timestamp(version.creation_timestamp), "metrics": dict(metrics),
            "tags": dict(version.tags or {})}  # fmt: skip


def _timestamp(milliseconds: int | None) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds") if milliseconds else ""


# --- the promotion gate ------------------------------------------------------------------------------


def _champion(mlflow_client: MlflowClient, settings: Settings) -> ModelVersion | None:
    try:
        return mlflow_client.get_model_version_by_alias(settings.model_name, settings.model_alias)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise


def group_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """`evaluate.group_table` as JSON-ready records (null for a group too small to score)."""
    return [{key: (None if isinstance(value, float) and np.isnan(value) else value) for key, value in row.items()}
            for row in table.to_dict(orient="records")]  # fmt: skip


@dataclass(frozen=True)
class Scores:
    """A version's ROC-AUC on the gate's test rows, overall and on its worst patient group."""

    roc_auc: float
    worst_group_roc_auc: float | None
    worst_group: str | None


def score_version(settings: Settings, version: str, rows: pd.DataFrame, labels: np.ndarray) -> Scores:
    """ROC-AUC of registered `version` on `rows` (raw columns) against `labels`, overall and per group."""
    model = load_pipeline(f"models:/{settings.model_name}/{version}", settings)
    probability = positive_probability(model, rows)
    summary = evaluate.group_summary(evaluate.group_table(rows, labels, probability, threshold=0.5))
    return Scores(float(roc_auc_score(labels, probability)), summary.get("roc_auc_worst_group"),
                  summary.get("worst_group"))  # fmt: skip


def run_gate(settings: Settings, version: str, test_rows: pd.DataFrame) -> GateDecision:
    """Promote `version` to `@production`, or give it `@challenger`, by ROC-AUC on `test_rows` (the current test split).

    It is promoted when its ROC-AUC is at least `promotion_min_auc`, not lower than the
    champion's by more than `promotion_tolerance`, and its worst patient group's ROC-AUC (race,
    gender, age band: `evaluate.group_table`) not lower than the champion's worst group's by
    more than `promotion_group_tolerance` (no champion: the floor alone decides).
    A champion that cannot be loaded or scored is not compared blindly: the challenger is
    kept and the reason is written down. The decision and both scores become version tags.
    """
    mlflow_client = client(settings)
    version = str(version)
    labels = target(test_rows[schema.TARGET_COLUMN], settings.target).to_numpy()
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the test split ({len(test_rows)} rows) needs both classes to compare models by ROC-AUC")
    floor, tolerance = settings.promotion_min_auc, settings.promotion_tolerance
    champion = _champion(mlflow_client, settings)
    champion_version = str(champion.version) if champion else None
    challenger_auc = champion_auc = None
    try:
        challenger_scores = score_version(settings, version, test_rows, labels)
        challenger_auc = challenger_scores.roc_auc
    except Exception as exc:  # noqa: BLE001 - whatever breaks loading, the gate must answer, not crash
        decision, reason = REFUSED, f"the challenger could not be loaded or scored: {type(exc).__name__}: {exc}"
    else:
        if champion_version == version:
            decision, reason = PROMOTED, f"version {version} already holds @{settings.model_alias}"
        elif champion_version is None:
            decision = PROMOTED if challenger_auc >= floor else KEPT
            reason = f"no champion yet; ROC-AUC {challenger_auc:.4f} {'clears' if decision == PROMOTED else 'is below'} the floor {floor}"
        else:
            try:
                champion_scores = score_version(settings, champion_version, test_rows, labels)
                champion_auc = champion_scores.roc_auc
            except Exception as exc:  # noqa: BLE001 - a missing or corrupt artifact must not crash the gate
                decision = REFUSED
                reason = (f"champion version {champion_version} could not be loaded or scored, so the challenger is "
                          f"not promoted blindly: {type(exc).__name__}: {exc}")  # fmt: skip
            else:
                decision, reason = _compare(challenger_auc, champion_auc, champion_version, floor, tolerance)
                if decision == PROMOTED and (worse := _worse_group(challenger_scores, champion_scores, settings)):
                    decision, reason = KEPT, worse
    alias = ""  # a challenger that cannot even be loaded gets no alias
    if decision == PROMOTED:
        if champion_version != version:
            _move_production(mlflow_client, settings, version, "gate")
        alias = settings.model_alias
    elif challenger_auc is not None:
        mlflow_client.set_registered_model_alias(settings.model_name, settings.challenger_alias, version)
        alias = settings.challenger_alias
    result = GateDecision(version, decision, alias, challenger_auc, champion_version, champion_auc, reason[:4000])
    scored = challenger_scores if challenger_auc is not None else Scores(0.0, None, None)
    champion_worst = champion_scores.worst_group_roc_auc if champion_auc is not None else None
    groups = {"gate.challenger_worst_group": scored.worst_group or "none",
              "gate.challenger_worst_group_roc_auc": scored.worst_group_roc_auc,
              "gate.champion_worst_group_roc_auc": champion_worst,
              "gate.group_tolerance": settings.promotion_group_tolerance}  # fmt: skip
    for key, value in {**result.tags(), "gate.test_rows": str(len(test_rows)), "gate.min_auc": str(floor),
                       "gate.tolerance": str(tolerance), "gate.decided_at": _now(),
                       **{k: v if isinstance(v, str) else _text(v) for k, v in groups.items()}}.items():  # fmt: skip
        mlflow_client.set_model_version_tag(settings.model_name, version, key, value)
    log.info("%s", result)
    return result


def _worse_group(challenger: Scores, champion: Scores, settings: Settings) -> str | None:
    """Why the challenger's worst group is too far below the champion's worst (PROMOTION_GROUP_TOLERANCE), or None."""
    tolerance = settings.promotion_group_tolerance
    if challenger.worst_group_roc_auc is None or champion.worst_group_roc_auc is None:
        return None
    if challenger.worst_group_roc_auc >= champion.worst_group_roc_auc - tolerance:
        return None
    return (f"worst-group ROC-AUC {challenger.worst_group_roc_auc:.4f} ({challenger.worst_group}) vs the champion's "
            f"{champion.worst_group_roc_auc:.4f} ({champion.worst_group}): lower by more than the group tolerance "
            f"{tolerance} (PROMOTION_GROUP_TOLERANCE)")  # fmt: skip


def _compare(challenger: float, champion: float, champion_version: str, floor: float,
             tolerance: float) -> tuple[str, str]:  # fmt: skip
    scores = f"ROC-AUC {challenger:.4f} vs champion version {champion_version} {champion:.4f}"
    if challenger < floor:
        return KEPT, f"{scores}: below the floor {floor}"
    if challenger < champion - tolerance:
        return KEPT, f"{scores}: lower by more than the tolerance {tolerance}"
    return PROMOTED, f"{scores}: within the tolerance {tolerance} or better, and above the floor {floor}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- moving aliases by hand ---------------------------------------------------------------------------


def _move_production(mlflow_client: MlflowClient, settings: Settings, version: str, how: str) -> AliasMove:
    """Point `@production` at `version`, recording the version it replaces for `rollback`."""
    name = settings.model_name
    champion = _champion(mlflow_client, settings)
    previous = str(champion.version) if champion else None
    if previous and previous != version:
        mlflow_client.set_model_version_tag(name, version, "previous_champion", previous)
    mlflow_client.set_registered_model_alias(name, settings.model_alias, version)
    mlflow_client.set_model_version_tag(name, version, "promoted_at", _now())
    mlflow_client.set_model_version_tag(name, version, "promoted_by", how)
    if _aliases(mlflow_client, name).get(settings.challenger_alias) == version:
        mlflow_client.delete_registered_model_alias(name, settings.challenger_alias)
    return AliasMove(version, previous, settings.model_alias)


def _aliases(mlflow_client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of a registered model (searching versions does not return their aliases)."""
    return {alias: str(version) for alias, version in mlflow_client.get_registered_model(name).aliases.items()}


def _existing_version(mlflow_client: MlflowClient, settings: Settings, version: str) -> ModelVersion:
    try:
        return mlflow_client.get_model_version(settings.model_name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{settings.model_name} has no version {version}") from exc


def promote(settings: Settings, version: str | int) -> AliasMove:
    """Move `@production` to `version` by hand (no gate), remembering the champion it replaces."""
    mlflow_client = client(settings)
    version = str(_existing_version(mlflow_client, settings, str(version)).version)
    return _move_production(mlflow_client, settings, version, "manual")


def rollback(settings: Settings) -> AliasMove:
    """Move `@production` back to the champion the current one replaced."""
    mlflow_client = client(settings)
    current = _champion(mlflow_client, settings)
    if current is None:
        raise RegistryError(f"{settings.model_name} has no @{settings.model_alias} version to roll back from")
    previous = (current.tags or {}).get("previous_champion")
    if not previous:
        raise RegistryError(f"version {current.version} replaced no earlier champion: nothing to roll back to")
    _existing_version(mlflow_client, settings, previous)
    mlflow_client.set_registered_model_alias(settings.model_name, settings.model_alias, previous)
    mlflow_client.set_model_version_tag(settings.model_name, str(current.version), "rolled_back_at", _now())
    return AliasMove(previous, str(current.version), settings.model_alias)


def list_versions(settings: Settings) -> pd.DataFrame:
    """Every version of the registered model, newest first: aliases, target, test ROC-AUC, gate decision, run."""
    mlflow_client = client(settings)
    columns = ["version", "aliases", "created", "candidate", "target", "test_roc_auc", "gate_decision", "run_id"]
    versions = mlflow_client.search_model_versions(f"name = '{settings.model_name}'")
    held: dict[str, list[str]] = {}
    if versions:
        for alias, version in sorted(_aliases(mlflow_client, settings.model_name).items()):
            held.setdefault(version, []).append(alias)
    rows = [{"version": int(v.version), "aliases": ",".join(held.get(str(v.version), [])),
             "created": _timestamp(v.creation_timestamp),
             "candidate": v.tags.get("candidate", ""), "target": v.tags.get("target", ""),
             "test_roc_auc": v.tags.get("gate.challenger_roc_auc", v.tags.get("test_roc_auc", "")),
             "gate_decision": v.tags.get("gate.decision", ""), "run_id": v.run_id} for v in versions]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).sort_values("version", ascending=False, ignore_index=True)


def versions_table(settings: Settings) -> str:
    """`list_versions` as a printable table (`readmission model list`)."""
    versions = list_versions(settings)
    if versions.empty:
        return f"no version of {settings.model_name} registered yet"
    return versions.replace({"aliases": {"": "-"}, "gate_decision": {"": "-"}}).to_string(index=False)


# --- the `readmission train` command ---------------------------------------------------------------------


def train_and_register(settings: Settings, candidates: list[Candidate] | None = None) -> GateDecision:
    """Train on the stored clean data, log and register the model, and run the gate on the current test split."""
    from readmission.storage import Storage

    storage = Storage.from_settings(settings)
    try:
        storage.create_schema()  # harmless when it exists; a fresh store then says "no data", not "no table"
        frame = storage.labelled_encounters()
    finally:
        storage.dispose()
    if frame.empty:
        raise ValueError("no clean data stored yet: run `readmission ingest` first")
    result = train(frame, settings, candidates)
    version = log_training(result, settings)
    return run_gate(settings, version.version, frame[frame["split"] == "test"])
