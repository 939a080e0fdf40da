"""Why one patient is at risk: exact per-field contributions of a prediction, in clinical words.

shap's `TreeExplainer` reads the trees of the pipeline's classifier (GradientBoostingClassifier
and HistGradientBoostingClassifier alike) and splits its log-odds output exactly between the
147 model features: the base value plus the contributions is the model's log-odds. Those are
summed back to the request fields they were computed from (`features.feature_sources`):
the one-hot levels of a column, the ICD-9 group of one diagnosis code, one medication. A
feature computed from several fields (`features.DERIVED_FEATURES`: the prior visits, the
medications given or changed) is shared between them in proportion to each field's part of
its value, equally when the value is zero.

A calibrated model (`readmission.train.calibrated`: Platt's sigmoid on the validation split)
maps the trees' log-odds `f` to `-(a f + b)`, a straight line, so its contributions are the
trees' ones times `-a` and stay exact on the calibrated log-odds.

Contributions are on the log-odds scale (`SCALE`): they add up, which probabilities do not.
Explanations are not stored with the model: the service computes them from the pipeline it
loaded, with the explainer built on the first request that asks for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.pipeline import Pipeline

from readmission import encounter_columns, features
from readmission.features import CodedEncounters, EncounterFeatures, input_matrix
from readmission.serving.api_models import MAX_FACTORS

SCALE = "log-odds"
FIELDS = encounter_columns.FEATURE_INPUT_COLUMNS


class NotExplainable(TypeError):
    """A pipeline whose classifier the explainer cannot read exactly."""


def tree_model(classifier: BaseEstimator) -> tuple[BaseEstimator, float, float]:
    """The tree ensemble inside `classifier` and the line (slope, intercept) from its log-odds to the model's.

    A bare ensemble: (itself, 1, 0). A sigmoid-calibrated one (fitted on a frozen ensemble): (the ensemble,
    -a, -b), since the calibrated probability is expit(-(a f + b)).
    """
    if not isinstance(classifier, CalibratedClassifierCV):
        return classifier, 1.0, 0.0
    (calibrated,) = classifier.calibrated_classifiers_
    (calibrator,) = calibrated.calibrators
    if not isinstance(calibrator, _SigmoidCalibration):
        raise NotExplainable(f"only a sigmoid calibration keeps contributions exact, not {type(calibrator).__name__}")
    ensemble = getattr(calibrated.estimator, "estimator", calibrated.estimator)  # FrozenEstimator(ensemble)
    return ensemble, -float(calibrator.a_), -float(calibrator.b_)


@dataclass(frozen=True)
class Explanation:
    """Contributions of each request field (rows x `FIELDS`) to the log-odds of each row, and their base."""

    base_value: float
    contributions: np.ndarray  # rows x FIELDS, log-odds
    values: np.ndarray  # rows x FIELDS, the request's raw values

    @property
    def log_odds(self) -> np.ndarray:
        return self.base_value + self.contributions.sum(axis=1)

    def factors(self, row: int, limit: int = MAX_FACTORS) -> list[dict[str, Any]]:
        """The fields that moved row `row`'s risk most, largest first, as `Factor` dicts (none that moved nothing)."""
        from readmission.ui.forms import field_label, value_label

        contributions = self.contributions[row]
        order = np.argsort(-np.abs(contributions), kind="stable")[:limit]
        return [
            {
                "field": FIELDS[i],
                "label": field_label(FIELDS[i]),
                "value": _plain(self.values[row, i]),
                "value_label": value_label(FIELDS[i], self.values[row, i]),
                "contribution": float(contributions[i]),
                "direction": "raises" if contributions[i] > 0 else "lowers",
            }
            for i in order
            if contributions[i] != 0
        ]


def _plain(value: Any) -> Any:
    """A raw value as a JSON-ready Python value (None for missing)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


class Explainer:
    """Explains the predictions of one fitted pipeline (`EncounterFeatures` then a tree classifier)."""

    def __init__(self, pipeline: Pipeline):
        import shap

        if len(pipeline) != 2 or not isinstance(pipeline[0], EncounterFeatures):
            raise NotExplainable("the pipeline is not EncounterFeatures followed by a classifier")
        ensemble, self.slope, self.intercept = tree_model(pipeline[-1])
        self.features = pipeline[0]
        try:
            self.tree_explainer = shap.TreeExplainer(ensemble, model_output="raw")
        except Exception as exc:  # noqa: BLE001 - shap raises bare Exceptions for models it cannot read
            raise NotExplainable(f"shap cannot read a {type(ensemble).__name__}: {exc}") from exc
        self.base_value = self.slope * float(np.ravel(self.tree_explainer.expected_value)[-1]) + self.intercept
        self.field_matrix, self.derived = _field_matrix(self.features.get_feature_names_out())

    def explain(self, table: np.ndarray | pd.DataFrame | CodedEncounters) -> Explanation:
        """The field contributions of every row of raw input (as the pipeline takes it)."""
        values = input_matrix(table)
        engineered = self.features.transform(table).to_numpy(dtype=float)
        shap_values = np.asarray(self.tree_explainer.shap_values(engineered, check_additivity=False))
        if shap_values.ndim == 3:  # one slice per class: the positive class is the last
            shap_values = shap_values[..., -1]
        by_feature = self.slope * shap_values
        by_field = by_feature @ self.field_matrix
        for feature, field_columns, source_features, share in self.derived:
            weights = np.asarray(share(engineered[:, source_features]), dtype=float)
            totals = weights.sum(axis=1, keepdims=True)
            weights = np.divide(weights, totals, out=np.full_like(weights, 1 / weights.shape[1]), where=totals > 0)
            by_field[:, field_columns] += by_feature[:, [feature]] * weights
        return Explanation(self.base_value, by_field, values)


def _field_matrix(feature_names: np.ndarray) -> tuple[np.ndarray, list[tuple[int, list[int], list[int], Any]]]:
    """(features x FIELDS matrix summing one-field features into their field, the derived features' sharing)."""
    position = {name: i for i, name in enumerate(feature_names)}
    field_position = {field: i for i, field in enumerate(FIELDS)}
    sources = features.feature_sources()
    matrix = np.zeros((len(feature_names), len(FIELDS)))
    derived = []
    for name, i in position.items():
        if name in features.DERIVED_FEATURES:
            columns, source_features, share = features.DERIVED_FEATURES[name]
            derived.append((i, [field_position[c] for c in columns], [position[f] for f in source_features], share))
        else:
            (column,) = sources[name]
            matrix[i, field_position[column]] = 1.0
    return matrix, derived
