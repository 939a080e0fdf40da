"""Explanations: exact per-field contributions of the project's model types, in clinical words."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

from readmission import encounter_columns
from readmission.config import Settings
from readmission.explain import Explainer
from readmission.features import EncounterFeatures, feature_sources, target
from readmission.train import HIST_MONOTONIC, Candidate, build_pipeline, train_model
from tests.factories import labelled_encounters

CLASSIFIERS = {
    "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0),
    "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(
        max_iter=40, max_features=0.5, random_state=0, monotonic_cst=HIST_MONOTONIC
    ),
}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return labelled_encounters(rows=3_000, seed=5)


MODELS = [f"{name}{calibration}" for name in CLASSIFIERS for calibration in ("", "+sigmoid")]


@functools.cache
def fitted(kind: str):
    """A model type, bare (fitted on all rows) or as training makes it (calibrated on the validation split)."""
    frame = labelled_encounters(rows=3_000, seed=5)
    name, calibrated = kind.removesuffix("+sigmoid"), kind.endswith("+sigmoid")
    if not calibrated:
        return build_pipeline(CLASSIFIERS[name]()).fit(frame, target(frame["readmitted"]).to_numpy())
    pipeline = train_model(frame, Settings(_env_file=None), [Candidate(name, CLASSIFIERS[name]())], figures=False).model
    assert isinstance(pipeline[-1], CalibratedClassifierCV)
    return pipeline


@pytest.fixture(params=MODELS)
def model(request):
    return fitted(request.param)


@pytest.fixture(scope="module")
def rows(frame) -> pd.DataFrame:
    return (
        frame[frame["split"] == "test"].head(300)[list(encounter_columns.FEATURE_INPUT_COLUMNS)].reset_index(drop=True)
    )


def test_every_model_column_comes_from_request_fields():
    columns = list(EncounterFeatures().get_feature_names_out())
    sources = feature_sources()
    assert list(sources) == columns
    assert {field for fields in sources.values() for field in fields} == set(encounter_columns.FEATURE_INPUT_COLUMNS)


def test_the_contributions_and_the_base_value_add_up_to_the_models_log_odds(model, rows):
    explanation = Explainer(model).explain(rows)
    assert explanation.contributions.shape == (len(rows), len(encounter_columns.FEATURE_INPUT_COLUMNS))
    np.testing.assert_allclose(explanation.log_odds, logit(model.predict_proba(rows)[:, 1]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", [kind for kind in MODELS if kind.startswith("hist_")])
def test_more_inpatient_admissions_never_lower_the_risk_and_rank_among_the_factors(kind, rows):
    """HistGradientBoosting, constrained as training makes it (HIST_MONOTONIC); GradientBoosting has no constraint."""
    model = fitted(kind)
    sample = rows.head(50)
    risks = []
    for admissions in range(5):
        risks.append(model.predict_proba(sample.assign(number_inpatient=admissions))[:, 1])
    assert np.all(np.diff(np.stack(risks), axis=0) >= -1e-12)
    explanation = Explainer(model).explain(sample.assign(number_inpatient=4))
    for row in range(len(sample)):
        factors = {factor["field"]: factor for factor in explanation.factors(row)}
        assert "number_inpatient" in factors, explanation.factors(row)
        assert factors["number_inpatient"]["direction"] == "raises"
        assert factors["number_inpatient"]["label"] == "Inpatient admissions in the past year"
        assert factors["number_inpatient"]["value"] == 4


def test_an_unknown_icd9_code_is_explained_as_the_other_group(model, rows):
    explainer = Explainer(model)
    unknown = explainer.explain(rows.head(20).assign(diag_1="XYZ123"))
    other = explainer.explain(rows.head(20).assign(diag_1="780"))  # 780: a real code of the "other" group
    diagnosis = list(encounter_columns.FEATURE_INPUT_COLUMNS).index("diag_1")
    np.testing.assert_allclose(unknown.contributions[:, diagnosis], other.contributions[:, diagnosis], atol=1e-12)
    np.testing.assert_allclose(
        unknown.log_odds, logit(model.predict_proba(rows.head(20).assign(diag_1="XYZ123"))[:, 1]), atol=1e-6
    )
    listed = [factor for row in range(20) for factor in unknown.factors(row) if factor["field"] == "diag_1"]
    assert all(
        factor["value"] == "XYZ123" and factor["value_label"] == "XYZ123 (Other conditions)" for factor in listed
    )


def test_factors_are_at_most_five_request_fields_largest_first(model, rows):
    explanation = Explainer(model).explain(rows.head(30))
    for row in range(30):
        factors = explanation.factors(row)
        assert 1 <= len(factors) <= 5
        sizes = [abs(factor["contribution"]) for factor in factors]
        assert sizes == sorted(sizes, reverse=True)
        assert max(sizes) == pytest.approx(np.abs(explanation.contributions[row]).max())
        for factor in factors:
            assert factor["field"] in encounter_columns.FEATURE_INPUT_COLUMNS
            assert factor["direction"] == ("raises" if factor["contribution"] > 0 else "lowers")


def test_prior_visits_are_shared_between_the_visit_fields_that_make_them():
    """total_prior_visits is split by each visit field's share; a patient with no visits splits it equally."""
    frame = labelled_encounters(rows=2_000, seed=2)
    labels = target(frame["readmitted"]).to_numpy()
    model = build_pipeline(GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)).fit(frame, labels)
    explainer = Explainer(model)
    columns = list(explainer.features.get_feature_names_out())
    visits = columns.index("total_prior_visits")
    rows = frame.head(2)[list(encounter_columns.FEATURE_INPUT_COLUMNS)].assign(
        number_outpatient=[3, 0], number_emergency=[1, 0], number_inpatient=[0, 0]
    )
    import shap

    by_feature = shap.TreeExplainer(model[-1]).shap_values(explainer.features.transform(rows).to_numpy())
    explanation = explainer.explain(rows)
    field = {
        name: list(encounter_columns.FEATURE_INPUT_COLUMNS).index(name)
        for name in ("number_outpatient", "number_emergency", "number_inpatient")
    }
    own = {name: by_feature[:, columns.index(name)] for name in field}
    assert explanation.contributions[0, field["number_outpatient"]] == pytest.approx(
        own["number_outpatient"][0] + 0.75 * by_feature[0, visits]
    )
    assert explanation.contributions[0, field["number_inpatient"]] == pytest.approx(own["number_inpatient"][0])
    assert explanation.contributions[1, field["number_inpatient"]] == pytest.approx(
        own["number_inpatient"][1] + by_feature[1, visits] / 3
    )
