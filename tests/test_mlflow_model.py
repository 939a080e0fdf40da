"""A registered version as MLflow's own tools use it: `mlflow.pyfunc`, `mlflow models serve`, `mlflow models predict`."""

from __future__ import annotations

import json
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from readmission import mlflow_model, registry, schema
from readmission.dataset import synthetic_dataset
from readmission.features import EncounterFeatures
from tests.factories import register_model, saved_model, signature_types
from tests.servers import VENV_BIN, ServerProcess, free_port


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def pyfunc(model_folder):
    return mlflow.pyfunc.load_model(str(model_folder))


def read_as_text(path) -> pd.DataFrame:
    """The file as the data API serves it: every cell the file's text, `?` and `None` kept."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def expected_probabilities(model_folder, rows: pd.DataFrame) -> np.ndarray:
    return mlflow_model.read_pipeline(model_folder).predict_proba(rows)[:, 1]


def test_the_file_as_pandas_reads_it_is_scored(pyfunc, model_folder, synthetic_csv):
    rows = pd.read_csv(synthetic_csv)
    assert rows["admission_type_id"].dtype == "int64" and rows["max_glu_serum"].isna().any()
    answer = pyfunc.predict(rows)
    assert list(answer.columns) == ["readmission_probability"] and len(answer) == len(rows)
    expected = expected_probabilities(model_folder, read_as_text(synthetic_csv))
    np.testing.assert_allclose(answer["readmission_probability"], expected, rtol=0, atol=1e-12)


def test_rows_read_as_text_get_the_same_answers(pyfunc, synthetic_csv):
    as_read = pyfunc.predict(pd.read_csv(synthetic_csv, nrows=300))
    as_text = pyfunc.predict(read_as_text(synthetic_csv).head(300))
    pd.testing.assert_frame_equal(as_read, as_text)
    assert as_read["readmission_probability"].between(0, 1).all() and as_read["readmission_probability"].nunique() > 10


def test_a_count_that_is_not_a_number_is_refused_by_name(pyfunc, synthetic_csv):
    rows = read_as_text(synthetic_csv).head(3)
    rows.loc[1, "number_inpatient"] = "many"
    with pytest.raises(Exception, match="number_inpatient") as refused:
        pyfunc.predict(rows)
    assert "valid integer" in str(refused.value)


def test_the_signature_and_input_example_have_the_data_sets_types(model_folder):
    types = signature_types(mlflow.models.Model.load(str(model_folder)).signature)
    assert types["number_inpatient"] == types["admission_type_id"] == "long" and types["diag_1"] == "string"
    example = json.loads((model_folder / "input_example.json").read_text())
    assert isinstance(example[0]["number_inpatient"], int) and isinstance(example[0]["race"], str)


class Doubling(TransformerMixin, BaseEstimator):
    """A step of a type nobody declared trusted."""

    def fit(self, X, y=None):  # noqa: N803
        return self

    def transform(self, X):  # noqa: N803
        return X * 2


def test_a_pipeline_holding_an_undeclared_type_is_not_packaged(tmp_path):
    pipeline = Pipeline([("features", EncounterFeatures()), ("doubling", Doubling())])
    with pytest.raises(ValueError, match=r"not in SKOPS_TRUSTED_TYPES: \['tests.test_mlflow_model.Doubling'\]"):
        mlflow_model.save_model(pipeline, tmp_path / "model", synthetic_dataset(3))
    assert not (tmp_path / "model").exists()


# --- MLflow's command line, against the registry ---------------------------------------------------------------


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """A registered `@production` version in an embedded store, and the environment MLflow's CLI needs for it."""
    from readmission.config import Settings

    data_dir = tmp_path_factory.mktemp("registry")
    settings = Settings(_env_file=None, data_dir=data_dir)
    register_model(settings)
    environment = {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    return settings, environment


@pytest.mark.servers
def test_mlflow_models_serve_answers_rows_as_the_data_set_reads(production, synthetic_csv, tmp_path):
    settings, environment = production
    port = free_port()
    uri = f"models:/{settings.model_name}@{settings.model_alias}"
    server = ServerProcess(
        [
            str(VENV_BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        f"http://127.0.0.1:{port}/ping",
        tmp_path / "serve.log",
        env=environment,
        timeout=180,
    )
    rows = pd.read_csv(synthetic_csv, nrows=20)
    server.start()
    try:
        response = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"inputs": json.loads(rows.to_json(orient="records"))},
            timeout=60,
        )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    answers = [row["readmission_probability"] for row in response.json()["predictions"]]
    expected = registry.load_pipeline(uri, settings).predict_proba(rows[list(schema.FEATURE_INPUT_COLUMNS)])[:, 1]
    np.testing.assert_allclose(answers, expected, rtol=0, atol=1e-12)


@pytest.mark.servers  # MLflow's own CLI in a process of its own
def test_mlflow_models_predict_scores_a_csv_file(production, synthetic_csv, tmp_path):
    settings, environment = production
    uri = f"models:/{settings.model_name}@{settings.model_alias}"
    sample = tmp_path / "rows.csv"
    pd.read_csv(synthetic_csv, nrows=10).to_csv(sample, index=False)
    result = subprocess.run(
        [
            str(VENV_BIN / "mlflow"),
            "models",
            "predict",
            "-m",
            uri,
            "-i",
            str(sample),
            "-t",
            "csv",
            "-o",
            str(tmp_path / "out.json"),
            "--env-manager",
            "local",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [row["readmission_probability"] for row in json.loads((tmp_path / "out.json").read_text())["predictions"]]
    assert len(answers) == 10 and all(0 < answer < 1 for answer in answers)
