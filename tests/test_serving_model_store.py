"""The model store on its own: models from a path, what it refuses to load, and failures that change nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from readmission import encounter_columns
from readmission.dataset import synthetic_dataset
from readmission.serving.model_store import ModelLoadError, ModelStore
from tests.factories import saved_model

# The store feeds the classifier a plain matrix once it has checked the feature names (see ServedModel._steps).
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


@pytest.fixture
def model_folder(tmp_path):
    return saved_model(tmp_path / "model")


def raw_rows(rows: int = 5):
    return synthetic_dataset(rows, seed=4)[list(encounter_columns.FEATURE_INPUT_COLUMNS)].to_numpy(dtype=object)


def test_a_model_at_a_path_is_served_and_loaded_again_only_on_request(make_settings, model_folder):
    store = ModelStore(make_settings(model_uri=str(model_folder)))
    assert store.refresh("startup")[0] == "loaded"
    served = store.current
    assert (served.target.uri, served.target.version, served.target.name) == (
        str(model_folder),
        None,
        "diabetes-readmission",
    )
    assert store.refresh("poll") == ("unchanged", served)  # polling cannot tell a path changed
    assert store.refresh("http")[0] == "loaded" and store.current is not served
    probabilities = store.current.probabilities(raw_rows())
    assert probabilities.shape == (5,) and np.all((probabilities > 0) & (probabilities < 1))


def test_the_served_probabilities_are_the_pipelines_own(make_settings, model_folder):
    store = ModelStore(make_settings(model_uri=str(model_folder)))
    store.refresh("startup")
    frame = synthetic_dataset(30, seed=5)
    expected = store.current.pipeline.predict_proba(frame)[:, 1]  # the pipeline as a whole, on a raw DataFrame
    served = store.current.probabilities(frame[list(encounter_columns.FEATURE_INPUT_COLUMNS)].to_numpy(dtype=object))
    np.testing.assert_array_equal(served, expected)


def test_a_pickled_model_is_refused(make_settings, tmp_path):
    folder = saved_model(tmp_path / "pickled", pickled=True)
    store = ModelStore(make_settings(model_uri=str(folder)))
    with pytest.raises(ModelLoadError, match="holds no skops pipeline"):
        store.refresh("startup")
    assert store.current is None and "skops" in store.last_error


def test_a_failed_reload_keeps_the_model_in_service(make_settings, model_folder):
    store = ModelStore(make_settings(model_uri=str(model_folder)))
    store.refresh("startup")
    served = store.current
    shutil.rmtree(model_folder)
    with pytest.raises(ModelLoadError):
        store.refresh("http")
    assert store.current is served and store.last_error
    assert served.probabilities(raw_rows(1)).shape == (1,)
