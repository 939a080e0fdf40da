"""Drift: PSI, reference profiles of training rows, and the serving-side sliding window."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from readmission import drift
from readmission.dataset import synthetic_dataset
from readmission.features import INPUT_COLUMNS


@pytest.fixture(scope="module")
def training_rows() -> pd.DataFrame:
    return synthetic_dataset(3_000, seed=1)


@pytest.fixture(scope="module")
def profile(training_rows) -> dict:
    return drift.reference_profile(training_rows)


def matrix(rows: pd.DataFrame) -> np.ndarray:
    """Rows as the inference service scores them: an object matrix in input-column order."""
    return rows[list(INPUT_COLUMNS)].to_numpy(dtype=object)


# --- psi -----------------------------------------------------------------------------------------------


def test_a_sample_against_itself_has_no_drift():
    values = np.random.default_rng(0).normal(size=2_000)
    assert drift.psi(values, values) == pytest.approx(0.0, abs=1e-9)


def test_a_shifted_numeric_sample_drifts_significantly_and_a_resampled_one_does_not():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5_000)
    assert drift.psi(reference, rng.normal(size=5_000)) < 0.05
    assert drift.psi(reference, rng.normal(loc=1.0, size=5_000)) > drift.SIGNIFICANT_PSI


def test_categorical_levels_are_compared_level_by_level_and_unseen_levels_count_as_drift():
    reference = np.array(["No"] * 50 + ["Steady"] * 30 + ["Up"] * 20)
    assert drift.psi(reference, np.array(["No"] * 5 + ["Steady"] * 3 + ["Up"] * 2)) == pytest.approx(0.0, abs=1e-9)
    assert drift.psi(reference, np.array(["No"] * 50 + ["Sideways"] * 50)) > drift.SIGNIFICANT_PSI


def test_psi_of_nothing_is_an_error_not_zero():
    with pytest.raises(ValueError, match="no values"):
        drift.psi(np.arange(10.0), np.array([], dtype=float))


# --- reference profiles -------------------------------------------------------------------------------


def test_a_profile_describes_every_main_feature_as_json_with_shares_summing_to_one(profile):
    assert json.loads(json.dumps(profile)) == profile
    assert set(profile["features"]) == set(drift.FEATURES) and profile["rows"] == 3_000
    for feature, spec in profile["features"].items():
        assert spec["kind"] == ("numeric" if feature in drift.NUMERIC_FEATURES else "categorical")
        assert sum(spec["proportions"]) == pytest.approx(1.0, abs=1e-4), feature
    assert "circulatory" in profile["features"]["diag_1_group"]["levels"]
    assert set(profile["features"]["discharge_group"]["levels"]) <= {"home", "snf", "home_health", "other"} | set(
        drift.DISCHARGE_GROUP_OF.values()
    )


def test_a_batch_like_the_training_data_does_not_drift_and_a_changed_feature_does(profile):
    batch = synthetic_dataset(1_000, seed=2)
    assert max(drift.batch_psi(profile, batch).values()) < 0.1
    changed = batch.assign(A1Cresult=">8", time_in_hospital="14")
    psi = drift.batch_psi(profile, changed)
    assert {f for f, value in psi.items() if value > drift.SIGNIFICANT_PSI} == {"A1Cresult", "time_in_hospital"}


def test_rows_as_a_frame_and_as_the_services_matrix_give_the_same_psi(profile):
    batch = synthetic_dataset(500, seed=3)
    assert drift.batch_psi(profile, batch) == drift.batch_psi(profile, matrix(batch))


def test_rows_without_a_source_column_are_refused_naming_it(profile):
    with pytest.raises(ValueError, match="diag_1"):
        drift.batch_psi(profile, synthetic_dataset(50, seed=3).drop(columns=["diag_1"]))


def test_a_profile_lacking_a_feature_is_refused_naming_it(profile):
    broken = {**profile, "features": {f: s for f, s in profile["features"].items() if f != "insulin"}}
    with pytest.raises(drift.ProfileError, match="insulin"):
        drift.batch_psi(broken, synthetic_dataset(50, seed=3))


def test_the_profile_travels_in_the_models_mlmodel_metadata(tmp_path, profile):
    import mlflow.sklearn
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier().fit([[0], [1]], [0, 1])
    requirements = ["scikit-learn"]  # given: inferring them takes MLflow ~20 s
    mlflow.sklearn.save_model(
        model, tmp_path / "with", metadata=drift.profile_metadata(profile), pip_requirements=requirements
    )
    mlflow.sklearn.save_model(model, tmp_path / "without", pip_requirements=requirements)
    assert drift.profile_of_model(str(tmp_path / "with")) == profile
    assert drift.profile_of_model(str(tmp_path / "without")) is None
    assert drift.window_of_model(tmp_path / "without", 100) is None
    assert drift.window_of_model(tmp_path / "with", 100).features == profile["features"]


# --- the sliding window ----------------------------------------------------------------------------------


def test_the_window_reports_the_psi_of_exactly_its_last_rows(profile):
    window = drift.DriftWindow(profile, size=700, interval=0)
    shifted = synthetic_dataset(900, seed=4).assign(insulin="Down", number_inpatient="9")
    recent = synthetic_dataset(1_000, seed=5)
    window.add(matrix(shifted))
    for start in range(0, 1_000, 150):  # slides across the ring's end several times
        window.add(matrix(recent.iloc[start : start + 150]))
    assert window.rows == 700
    expected = drift.batch_psi(profile, recent.iloc[-700:])
    assert window.psi() == pytest.approx(expected, abs=1e-6)


def test_a_half_full_window_counts_only_the_rows_it_holds(profile):
    window = drift.DriftWindow(profile, size=1_000, interval=0)
    rows = synthetic_dataset(400, seed=6)
    window.add(rows)  # a frame works as well as a matrix
    assert window.rows == 400
    assert window.psi() == pytest.approx(drift.batch_psi(profile, rows), abs=1e-6)


def test_a_window_with_too_few_rows_reports_nothing(profile):
    window = drift.DriftWindow(profile, size=1_000, interval=0, min_rows=100)
    window.add(matrix(synthetic_dataset(99, seed=7)))
    assert window.psi() == {}


def test_rows_are_binned_at_most_once_an_interval_keeping_only_the_rows_the_window_can_hold(profile):
    window = drift.DriftWindow(profile, size=200, interval=3600)
    rows = matrix(synthetic_dataset(500, seed=8))
    assert window.add(rows[:10]) is True and window.rows == 10  # the first rows at once
    for start in range(10, 500, 70):
        assert window.add(rows[start : start + 70]) is False  # queued, the older ones dropped unseen
    assert window.rows == 10 and window._queued_rows < 200 + 70
    window.interval = 0
    assert window.add(rows[:0]) is True and window.rows == 200
    assert window.psi() == pytest.approx(drift.batch_psi(profile, rows[-200:]), abs=1e-6)
