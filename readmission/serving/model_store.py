"""The model in service: loaded at start-up, kept fresh by polling its alias, swapped atomically.

`ModelStore.current` is one reference to an immutable `ServedModel`. A new version is loaded
completely on the side and then swapped in with a single assignment, so a request that
already holds the old model finishes with it, and no request ever sees half a model. When
loading fails (MLflow down, artifact missing), the old model keeps serving; the failure is
counted in the metrics and logged, and the next poll tries again.
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sklearn
from sklearn.pipeline import Pipeline

from readmission import encounter_columns
from readmission.config import Settings
from readmission.drift import DriftWindow, window_of_model
from readmission.explain import Explainer
from readmission.features import INPUT_COLUMNS, CodedEncounters, EncounterFeatures, input_matrix
from readmission.mlflow_model import read_pipeline
from readmission.serving import metrics

log = logging.getLogger(__name__)

STARTUP_RETRY_SECONDS = 5.0  # while no model is loaded, retry at least this often
DEFAULT_THRESHOLD = 0.5
THRESHOLD_KEYS = ("decision_threshold", "threshold")  # where a training run may record its threshold

Trigger = Literal["startup", "poll", "http"]
# `ServedModel` feeds the classifier a plain matrix after checking its columns once (see `_steps`).
warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)


class ModelLoadError(RuntimeError):
    """The model could not be resolved or loaded; the one in service (if any) stays."""


@dataclass(frozen=True)
class ModelTarget:
    """What `MODEL_URI` points at right now: a registered version, or a path."""

    uri: str  # what it is: models:/<name>/<version>, or the path
    name: str
    source: str = ""  # where its files are (the registry's download location); empty: `uri` itself
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedModel:
    """A loaded pipeline and what the model card says about it. Never changed once built."""

    pipeline: Pipeline  # raw encounter columns -> probabilities
    target: ModelTarget
    metrics: dict[str, float]
    tags: dict[str, str]
    decision_threshold: float
    loaded_at: datetime
    load_seconds: float
    drift: DriftWindow | None = None  # recent inputs against the training profile logged with the model
    groups: list[dict] = field(default_factory=list)  # the run's per-group test metrics (evaluate.group_table)

    @cached_property
    def _steps(self) -> tuple[EncounterFeatures, Any, int] | None:
        """(features, classifier, positive column) when the pipeline may be called step by step, else None.

        scikit-learn checks a DataFrame's columns on every call (a millisecond for 147 features)
        and the feature step reads a raw matrix as it is; so for the production shape,
        `EncounterFeatures` then a classifier fitted on exactly its output columns (checked
        once, here), the steps are called directly on plain matrices.
        """
        if len(self.pipeline) != 2 or not isinstance(features := self.pipeline[0], EncounterFeatures):
            return None
        classifier = self.pipeline[-1]
        if list(getattr(classifier, "feature_names_in_", [])) != list(features.get_feature_names_out()):
            return None
        return features, classifier, list(classifier.classes_).index(1)

    @cached_property
    def explainer(self) -> Explainer:
        """The pipeline's explainer, built at the first explained request (shap is imported only then)."""
        return Explainer(self.pipeline)

    def probabilities(self, table: np.ndarray | pd.DataFrame | CodedEncounters) -> np.ndarray:
        """Readmission probability of each row of raw input (a matrix in `FEATURE_INPUT_COLUMNS` order): one call."""
        if self._steps is None:
            if not isinstance(table, pd.DataFrame):
                table = pd.DataFrame(input_matrix(table), columns=INPUT_COLUMNS, dtype=object)
            return self.pipeline.predict_proba(table)[:, list(self.pipeline.classes_).index(1)]
        features, classifier, positive = self._steps
        with sklearn.config_context(assume_finite=True):  # EncounterFeatures never outputs NaN or inf
            return classifier.predict_proba(features.transform(table).to_numpy())[:, positive]


def resolve_target(settings: Settings) -> ModelTarget:
    """The version `MODEL_URI` names now (asking the registry for an alias), or the path it names.

    `ModelLoadError` when the URI names no version (an alias nobody holds yet)."""
    from readmission.model.production import MODEL_URI, registry_client, version_of_uri

    if not (match := MODEL_URI.match(settings.model_uri)):
        return ModelTarget(uri=settings.model_uri, name=settings.model_name)
    client = registry_client(settings)
    version = version_of_uri(settings.model_uri, settings, client)
    if version is None:
        raise ModelLoadError(f"no version of the registry holds {settings.model_uri} yet")
    name = version.name
    return ModelTarget(
        uri=f"models:/{name}/{version.version}",
        name=name,
        version=str(version.version),
        alias=match["alias"],
        source=client.get_model_version_download_uri(name, version.version),
        run_id=version.run_id,
        tags=dict(version.tags or {}),
    )


def _decision_threshold(params: dict[str, str], run_metrics: dict[str, float]) -> float:
    for key in THRESHOLD_KEYS:
        for source in (params, run_metrics):
            if key in source:
                return float(source[key])
    return DEFAULT_THRESHOLD


def _group_table(run_id: str, settings: Settings) -> list[dict]:
    """The run's per-group metrics (`registry.GROUP_ARTIFACT`); empty for a run that logged none."""
    from readmission.model.production import registry_client
    from readmission.model.registry import GROUP_ARTIFACT

    try:
        with tempfile.TemporaryDirectory(prefix="group-table-") as folder:
            path = registry_client(settings).download_artifacts(run_id, GROUP_ARTIFACT, folder)
            return list(json.loads(Path(path).read_text()))
    except Exception as exc:  # noqa: BLE001 - runs from before the table was logged have none
        log.info("run %s has no %s: %s", run_id, GROUP_ARTIFACT, exc)
        return []


def load_served_model(settings: Settings, target: ModelTarget) -> ServedModel:
    """Download and deserialize `target`, with its run's metrics and lineage tags."""
    import mlflow

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="served-model-") as folder:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=target.source or target.uri,
                dst_path=folder,
                tracking_uri=settings.mlflow_tracking_uri,
                registry_uri=settings.mlflow_tracking_uri,
            )
        )
        pipeline = read_pipeline(local)
        drift = window_of_model(local, settings.drift_window)
    params, run_metrics, tags, groups = {}, {}, dict(target.tags), []
    if target.run_id:
        from readmission.model.production import registry_client

        run = registry_client(settings).get_run(target.run_id)
        params, run_metrics = dict(run.data.params), dict(run.data.metrics)
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} | tags
        groups = _group_table(target.run_id, settings)
    model = ServedModel(
        pipeline=pipeline,
        target=target,
        metrics=run_metrics,
        tags=tags,
        groups=groups,
        decision_threshold=_decision_threshold(params, run_metrics),
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        drift=drift,
    )
    model.probabilities(
        np.full((1, len(INPUT_COLUMNS)), encounter_columns.MISSING, dtype=object)
    )  # fail here, not in a request
    return model


def _settle_memory() -> None:
    """Collect the replaced model's garbage once, then take everything left out of the cyclic collector.

    A worker holds hundreds of thousands of long-lived objects (libraries, the model); a full collection
    of them pauses it long enough that requests would otherwise meet the pause again and again.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelStore:
    """Holds the model in service and replaces it when `MODEL_URI` points at a new version."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self._loading = threading.Lock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    def refresh(self, trigger: Trigger) -> tuple[Literal["loaded", "unchanged"], ServedModel]:
        """Load the version `MODEL_URI` names if it is not the one in service; raise `ModelLoadError` on failure."""
        with self._loading:
            previous = self.current
            try:
                target = resolve_target(self.settings)
                # A registered version never changes; a path may, so /reload (only) loads it again.
                if previous and target.uri == previous.target.uri and (target.version or trigger != "http"):
                    metrics.MODEL_RELOADS.labels("unchanged", trigger).inc()
                    return "unchanged", previous
                model = load_served_model(self.settings, target)
            except Exception as exc:  # noqa: BLE001 - any failure to load leaves the old model in service
                self.last_error = f"{type(exc).__name__}: {exc}"
                metrics.MODEL_RELOADS.labels("failure", trigger).inc()
                log.warning(
                    "loading %s failed (%s); %s",
                    self.settings.model_uri,
                    self.last_error,
                    f"still serving version {previous.target.version}" if previous else "no model in service",
                )
                raise ModelLoadError(self.last_error) from exc
            self.current = model  # the swap: one reference assignment
            self.last_error = None
            _settle_memory()
            metrics.model_swapped(previous and previous.target, model.target, model.load_seconds)
            metrics.MODEL_RELOADS.labels("success", trigger).inc()
            log.info(
                "serving %s (%s) after %s; loaded in %.2fs",
                model.target.uri,
                model.target.name,
                trigger,
                model.load_seconds,
            )
            return "loaded", model

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh("startup" if self.current is None else "poll")
            except ModelLoadError:
                pass  # counted and logged by refresh
            poll = self.settings.model_poll_seconds
            self._stopping.wait(poll if self.current else min(poll, STARTUP_RETRY_SECONDS))

    def start(self) -> None:
        """Load in the background (the process answers /health at once) and keep polling."""
        self._poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._poller:
            self._poller.join(timeout=5)
