"""Data drift: the population stability index (PSI) of encounters against a model's training data.

A *reference profile* describes the training rows of a model, feature by feature: numeric
features by quantile bins (edges and the share of rows in each), categorical ones by level.
It is plain JSON, logged with the model (MLmodel metadata, key `reference_profile`), so the
pipeline (each new batch) and the inference service (a sliding window of recent requests)
compare against exactly what the model in production was trained on.

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

Below 0.1 the populations are alike, 0.1-0.25 is a moderate shift, above 0.25 a significant
one (the alert threshold). Every profile has one extra bin per feature: missing values for a
numeric feature, levels the training data never had for a categorical one.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from readmission import encounter_columns
from readmission.encodings import DISCHARGE_LEVELS, diagnosis_groups
from readmission.features import INPUT_COLUMNS, CodedEncounters, input_matrix

log = logging.getLogger(__name__)

PROFILE_KEY = "reference_profile"  # its key in the model's MLmodel metadata
PROFILE_VERSION = 1
NUMERIC_BINS = 10
MIN_PROPORTION = 1e-4  # an empty bin counts as this share: ln(0) would make any PSI infinite
SIGNIFICANT_PSI = 0.25

NUMERIC_FEATURES = (
    "time_in_hospital",
    "num_lab_procedures",
    "num_medications",
    "number_inpatient",
    "number_emergency",
    "number_diagnoses",
)
CATEGORICAL_FEATURES = ("age", "A1Cresult", "insulin", "discharge_group", "diag_1_group")
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
# The raw column each feature is computed from.
SOURCE_COLUMNS = {**{f: f for f in FEATURES}, "discharge_group": "discharge_disposition_id", "diag_1_group": "diag_1"}
DISCHARGE_GROUP_OF = {code: group for group, codes in DISCHARGE_LEVELS.items() for code in codes}


class ProfileError(ValueError):
    """A reference profile that is malformed or lacks a feature."""


# --- feature values from raw encounter columns --------------------------------------------------------


def _text(values: np.ndarray) -> np.ndarray:
    """Values as text, missing ones (None, NaN) as the data set's marker `?`."""
    values = np.asarray(values, dtype=object)
    return np.where(pd.isna(values), encounter_columns.MISSING, values).astype(str).astype(object)


def _numbers(values: np.ndarray) -> np.ndarray:
    """Values as floats, anything non-numeric as NaN (numbers and numeric text take the fast path)."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)


def _discharge_groups(values: np.ndarray) -> np.ndarray:
    """The feature transformer's group of each discharge_disposition_id, "other" for the rest (once per distinct id)."""
    distinct, at = np.unique(_numbers(values), return_inverse=True)
    groups = [DISCHARGE_GROUP_OF.get(str(int(n)), "other") if np.isfinite(n) else "other" for n in distinct]
    return np.array(groups, dtype=object)[at]


DERIVED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "discharge_group": _discharge_groups,
    "diag_1_group": lambda values: diagnosis_groups(values).astype(object),
}


def feature_values(feature: str, raw: np.ndarray) -> np.ndarray:
    """`feature` of each row, from its raw source column (`SOURCE_COLUMNS[feature]`): floats or text."""
    if feature in NUMERIC_FEATURES:
        return _numbers(raw)
    return _text(DERIVED[feature](raw) if feature in DERIVED else raw)


def raw_columns(rows: pd.DataFrame | np.ndarray) -> dict[str, np.ndarray]:
    """The source column of every feature, from a frame or from a matrix in `FEATURE_INPUT_COLUMNS` order."""
    if isinstance(rows, pd.DataFrame):
        missing = sorted({c for c in SOURCE_COLUMNS.values() if c not in rows.columns})
        if missing:
            raise ValueError(f"the rows lack the columns drift is measured on: {missing}")
        return {f: rows[column].to_numpy(dtype=object) for f, column in SOURCE_COLUMNS.items()}
    table = np.asarray(rows, dtype=object)
    if table.ndim != 2 or table.shape[1] != len(INPUT_COLUMNS):
        raise ValueError(f"expected a matrix of {len(INPUT_COLUMNS)} input columns, got shape {table.shape}")
    return {f: table[:, INPUT_COLUMNS.get_loc(column)] for f, column in SOURCE_COLUMNS.items()}


# --- profiles and PSI ----------------------------------------------------------------------------------


def _feature_profile(values: np.ndarray, numeric: bool, bins: int) -> dict[str, Any]:
    """Bins of `values` (edges or levels) and the share of values in each, the extra bin last."""
    if numeric:
        present = values[np.isfinite(values)]
        quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else []
        profile: dict[str, Any] = {"kind": "numeric", "edges": [float(e) for e in np.unique(quantiles)]}
    else:
        levels, counts = np.unique(values.astype(str), return_counts=True)
        profile = {"kind": "categorical", "levels": [str(v) for v in levels[np.argsort(-counts, kind="stable")]]}
    return profile | {"proportions": (bin_counts(profile, values) / max(len(values), 1)).round(6).tolist()}


def bin_count(profile: dict[str, Any]) -> int:
    """Bins of a feature's profile, the extra one included."""
    return len(profile["edges"]) + 2 if profile["kind"] == "numeric" else len(profile["levels"]) + 1


def bin_indices(profile: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """The bin of each value: (-inf, e1], (e1, e2], ..., (ek, inf), missing; or a level, unseen levels last."""
    if profile["kind"] == "numeric":
        edges = np.asarray(profile["edges"], dtype=float)
        values = np.asarray(values, dtype=float)
        return np.where(np.isfinite(values), np.searchsorted(edges, values, side="left"), len(edges) + 1)
    position = {level: i for i, level in enumerate(profile["levels"])}
    unseen = len(position)
    return np.fromiter((position.get(v, unseen) for v in values), dtype=np.intp, count=len(values))


def bin_counts(profile: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each bin of a feature's profile."""
    return np.bincount(bin_indices(profile, values), minlength=bin_count(profile))


def psi_of_counts(expected: list[float] | np.ndarray, counts: np.ndarray) -> float:
    """PSI of observed bin `counts` against `expected` proportions of the same bins."""
    total = counts.sum()
    if total == 0:
        raise ValueError("no values to compare with the reference")
    actual = np.maximum(counts / total, MIN_PROPORTION)
    expected = np.maximum(np.asarray(expected, dtype=float), MIN_PROPORTION)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = NUMERIC_BINS) -> float:
    """PSI of the sample `actual` against the sample `expected`: numbers in `bins` quantile bins of
    `expected`, anything else (text) level by level."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    numeric = expected.dtype.kind in "iuf"
    values = actual.astype(float) if numeric else actual.astype(str)
    profile = _feature_profile(expected.astype(float) if numeric else expected.astype(str), numeric, bins)
    return psi_of_counts(profile["proportions"], bin_counts(profile, values))


def reference_profile(rows: pd.DataFrame, bins: int = NUMERIC_BINS) -> dict[str, Any]:
    """The JSON-able profile of training rows (raw encounter columns) for every feature in `FEATURES`."""
    if rows.empty:
        raise ValueError("a reference profile needs at least one row")
    columns = raw_columns(rows)
    features = {f: _feature_profile(feature_values(f, columns[f]), f in NUMERIC_FEATURES, bins) for f in FEATURES}
    return {"version": PROFILE_VERSION, "rows": len(rows), "features": features}


def checked(profile: dict[str, Any]) -> dict[str, Any]:
    """`profile` if it describes every feature of `FEATURES` consistently; else ProfileError naming the problem."""
    if not isinstance(profile, dict) or profile.get("version") != PROFILE_VERSION:
        raise ProfileError(f"not a version {PROFILE_VERSION} reference profile")
    features = profile.get("features", {})
    for feature in FEATURES:
        spec = features.get(feature)
        if not spec or len(spec.get("proportions", [])) != bin_count(spec):
            raise ProfileError(f"the reference profile has no consistent entry for {feature!r}")
    return profile


def batch_psi(profile: dict[str, Any], rows: pd.DataFrame | np.ndarray) -> dict[str, float]:
    """PSI of each feature of `rows` (raw encounter columns) against the reference `profile`."""
    features = checked(profile)["features"]
    columns = raw_columns(rows)
    counts = {f: bin_counts(features[f], feature_values(f, columns[f])) for f in FEATURES}
    return {f: round(psi_of_counts(features[f]["proportions"], counts[f]), 6) for f in FEATURES}


# --- where profiles live: the model's MLmodel metadata --------------------------------------------------


def profile_metadata(profile: dict[str, Any]) -> dict[str, Any]:
    """What to pass as `metadata=` to `mlflow.<flavor>.log_model` so the profile travels with the model."""
    return {PROFILE_KEY: checked(profile)}


def profile_of_model(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The reference profile logged with the model at `model_uri`, or None: a local folder, or the artifact
    location of a model of `tracking_uri` (`readmission.model.production.model_files`; only its MLmodel
    file is downloaded)."""
    import mlflow
    from mlflow.models import Model

    if Path(model_uri).exists():
        metadata = Model.load(model_uri).metadata
    else:
        with tempfile.TemporaryDirectory(prefix="mlmodel-") as folder:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri.rstrip('/')}/MLmodel", dst_path=folder, tracking_uri=tracking_uri
            )
            metadata = Model.load(path).metadata
    profile = (metadata or {}).get(PROFILE_KEY)
    return checked(profile) if profile is not None else None


# --- serving: a sliding window of recent rows ------------------------------------------------------------


class DriftWindow:
    """The bins of the last `size` rows seen, kept as running counts, and their PSI against a profile.

    `add` is called on every scoring call, so it only queues the rows; they are binned in one
    vectorized pass at most every `interval` seconds. Queued rows that more recent ones would
    push out of the window before they were binned are dropped unseen, so the cost stays one
    pass over at most `size` rows per interval however heavy the traffic. Thread-safe: batch
    requests are scored on a thread pool.
    """

    def __init__(self, profile: dict[str, Any], size: int, interval: float = 5.0, min_rows: int = 100):
        self.features = checked(profile)["features"]
        self.size, self.interval, self.min_rows = size, interval, min(min_rows, size)
        self._bins = np.zeros((size, len(FEATURES)), dtype=np.intp)  # a ring buffer of rows' bin indices
        self._counts = [np.zeros(bin_count(self.features[f]), dtype=np.int64) for f in FEATURES]
        self._rows = self._next = 0
        self._queued: deque[np.ndarray] = deque()
        self._queued_rows = 0
        self._binned_at = -math.inf  # the first rows are binned at once
        self._lock = threading.Lock()

    def add(self, rows: np.ndarray | pd.DataFrame | CodedEncounters) -> bool:
        """Queue raw rows (as `features.input_matrix` takes them); True when the window was updated."""
        table = input_matrix(rows)
        with self._lock:
            self._queued.append(table)
            self._queued_rows += len(table)
            while self._queued_rows - len(self._queued[0]) >= self.size:
                self._queued_rows -= len(self._queued.popleft())
            if time.monotonic() - self._binned_at < self.interval:
                return False
            queued = np.concatenate(self._queued)[-self.size :]
            self._queued.clear()
            self._queued_rows, self._binned_at = 0, time.monotonic()
            self._slide(queued)
            return True

    def _slide(self, table: np.ndarray) -> None:
        columns = raw_columns(table)
        bins = np.column_stack([bin_indices(self.features[f], feature_values(f, columns[f])) for f in FEATURES])
        slots = (self._next + np.arange(len(bins))) % self.size
        leaving = slots[len(slots) - max(0, self._rows + len(bins) - self.size) :]  # the oldest rows, overwritten
        for j, counts in enumerate(self._counts):
            np.subtract.at(counts, self._bins[leaving, j], 1)
        for j, counts in enumerate(self._counts):
            np.add.at(counts, bins[:, j], 1)
        self._bins[slots] = bins
        self._next = int((self._next + len(bins)) % self.size)
        self._rows = min(self.size, self._rows + len(bins))

    @property
    def rows(self) -> int:
        """Rows in the window now (queued rows not yet binned excluded)."""
        return self._rows

    def psi(self) -> dict[str, float]:
        """PSI of each feature over the window; empty until it holds `min_rows` rows (a few rows say nothing)."""
        with self._lock:
            if self._rows < self.min_rows:
                return {}
            return {
                f: psi_of_counts(self.features[f]["proportions"], counts)
                for f, counts in zip(FEATURES, self._counts, strict=True)
            }


def window_of_model(model_dir: Path | str, size: int) -> DriftWindow | None:
    """A `DriftWindow` of `size` rows against the profile in the MLmodel file of `model_dir`; None (logged) when
    the model carries no usable profile: it still serves, only without drift gauges."""
    try:
        profile = profile_of_model(str(model_dir))
    except ProfileError as exc:
        log.warning("the model at %s has an unusable reference profile (%s): no drift gauges", model_dir, exc)
        return None
    if profile is None:
        log.info("the model at %s carries no reference profile: no drift gauges", model_dir)
        return None
    return DriftWindow(profile, size)
