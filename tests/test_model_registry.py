"""MLflow logging, the registry and `@production` (`readmission.model.registry`, `readmission.model.production`):
on the embedded store, and on the real `mlflow server` (Dockerfile_mlflow's command) with its backend store in
MariaDB and its artifacts in S3."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.models import Model
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

from readmission import encounter_columns, mlflow_model
from readmission import train as training
from readmission.cli import main
from readmission.config import Settings, get_settings
from readmission.features import EncounterFeatures, target
from readmission.model import production, registry
from readmission.model.production import registry_client
from readmission.train import Candidate, train_model
from tests.factories import (
    aliases,
    log_version,
    model_encounters,
    model_keys,
    signature_types,
    small_boosting,
    version_tags,
)

# --- the embedded store ----------------------------------------------------------------------------------


def test_the_embedded_store_keeps_its_artifacts_in_the_data_folder(make_settings, good_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = make_settings()
    version = registry.log_training(good_model, settings)
    experiment = registry_client(settings).get_experiment_by_name(settings.mlflow_experiment)
    assert settings.mlflow_tracking_uri == f"sqlite:///{settings.data_dir.resolve() / 'mlflow.db'}"
    assert experiment.artifact_location == settings.artifacts_dir.as_uri()
    assert list(settings.artifacts_dir.rglob("pipeline.skops")), "the model is not under artifacts_dir"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "something was written outside DATA_DIR"
    assert str(version.version) == "1"


def test_a_run_logs_params_metrics_figures_lineage_and_a_model_of_raw_columns(make_settings, good_model, tmp_path):
    settings = make_settings()
    version = registry.log_training(good_model, settings)
    client = registry_client(settings)
    run = client.get_run(version.run_id)
    assert run.data.params["classifier"] == "GradientBoostingClassifier"
    assert run.data.params["classifier.n_estimators"] == "30" and run.data.params["target"] == "any"
    for split in ("validation", "test"):
        for name in ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"):
            assert run.data.metrics[f"{split}_{name}"] == pytest.approx(
                good_model.evaluation.metrics[f"{split}_{name}"]
            )
    assert run.data.metrics["decision_threshold"] == pytest.approx(good_model.evaluation.threshold)
    lineage = good_model.lineage.tags()
    assert {k: run.data.tags[k] for k in lineage} == lineage == {k: version.tags[k] for k in lineage}
    assert version.tags["run_id"] == run.info.run_id and version.tags["target"] == "any"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        f"plots/{n}"
        for n in (
            "confusion_matrix.png",
            "roc_curve.png",
            "pr_curve.png",
            "calibration.png",
            "reliability_diagram.png",
            "feature_importance.png",
        )
    }
    for name in ("test_ece", "test_brier", "test_roc_auc_worst_group", "test_roc_auc_group_gap"):
        assert run.data.metrics[name] == pytest.approx(good_model.evaluation.metrics[name])
    groups = json.loads(
        Path(client.download_artifacts(run.info.run_id, registry.GROUP_ARTIFACT, str(tmp_path))).read_text()
    )
    assert groups == registry.group_records(good_model.evaluation.groups)
    assert {row["attribute"] for row in groups} == {"race", "gender", "age_band"}
    assert any(row["status"] == "too small" and row["roc_auc"] is None for row in groups)

    model = Model.load(
        mlflow.artifacts.download_artifacts(
            artifact_uri=production.model_files(f"models:/{settings.model_name}/{version.version}", settings)
            + "/MLmodel",
            dst_path=str(tmp_path),
            tracking_uri=settings.mlflow_tracking_uri,
        )
    )
    types = signature_types(model.signature)
    assert sorted(types) == sorted(encounter_columns.FEATURE_INPUT_COLUMNS)
    assert {name for name, kind in types.items() if kind == "long"} == set(mlflow_model.INTEGER_COLUMNS)
    assert {kind for name, kind in types.items() if name not in mlflow_model.INTEGER_COLUMNS} == {"string"}
    assert model.saved_input_example_info is not None
    assert model.flavors["python_function"]["artifacts"]["pipeline"]["path"].endswith("pipeline.skops")


def test_calibrated_hist_gradient_boosting_models_trust_their_own_types_only():
    hist = Candidate("hist_gradient_boosting", HistGradientBoostingClassifier(max_iter=5))
    model = train_model(model_encounters(), Settings(_env_file=None), [hist], figures=False).model
    assert mlflow_model.trusted_types(model) == [
        "readmission.features.EncounterFeatures",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    ]


class Doubling(TransformerMixin, BaseEstimator):
    """A transformer of a type nobody declared trusted."""

    def fit(self, X, y=None):  # noqa: N803
        return self

    def transform(self, X):  # noqa: N803
        return X * 2


def test_a_model_holding_an_undeclared_type_is_refused_not_pickled():
    rows, labels = model_encounters(), target(model_encounters()["readmitted"]).to_numpy()
    model = Pipeline(
        [
            ("features", EncounterFeatures()),
            ("doubling", Doubling()),
            ("classifier", GradientBoostingClassifier(n_estimators=2)),
        ]
    ).fit(rows, labels)
    with pytest.raises(ValueError, match=r"not in SKOPS_TRUSTED_TYPES: \['tests.test_model_registry.Doubling'\]"):
        mlflow_model.trusted_types(model)


# --- the real MLflow server: MariaDB backend store, S3 artifacts -------------------------------------------


def test_train_register_promote_and_predict_from_a_fresh_process(
    environment, monkeypatch, mlflow_server, synthetic_csv, tmp_path, capsys
):
    name = f"readmission-{uuid.uuid4().hex[:10]}"
    for variable, value in {
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MODEL_NAME": name,
        "MLFLOW_EXPERIMENT": name,
    }.items():
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    settings = get_settings()
    assert main(["ingest", "--file", str(synthetic_csv), "--batch-size", "2000"]) == 0

    monkeypatch.setattr(training, "default_candidates", lambda seed: small_boosting())  # a small model, quickly
    assert main(["train"]) == 0

    decision = capsys.readouterr().out.splitlines()[-1]
    assert decision.startswith("version 1: promoted (@production): no champion yet; ROC-AUC 0."), decision
    assert any(key.endswith("pipeline.skops") for key in model_keys(settings, "1", mlflow_server)), "not in S3"
    assert version_tags(settings, "1")["lineage.batches"] == "1,2"
    rows = pd.read_csv(synthetic_csv, dtype=str, keep_default_na=False).head(50)
    expected = registry.load_pipeline(settings).predict_proba(rows)[:, 1]  # models:/<name>@production
    # A data scientist's three lines, in a fresh process: the file as pandas reads it, through MLflow's own loader.
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow, pandas as pd;"
            f"model = mlflow.pyfunc.load_model('models:/{settings.model_name}@production');"
            f"print(model.predict(pd.read_csv('{synthetic_csv}', nrows=50)).to_json(orient='split'))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow_server.url},
        cwd=tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    answer = json.loads(fresh.stdout.splitlines()[-1])
    assert answer["columns"] == ["readmission_probability"]
    probabilities = np.array(answer["data"]).ravel()
    assert probabilities == pytest.approx(expected) and len(np.unique(probabilities)) > 10


def test_rollback_returns_production_to_the_previous_champion(on_server, plain_model):
    settings = on_server()
    first = log_version(plain_model, settings)
    second = log_version(plain_model, settings)
    registry.set_production(settings, first)
    registry.set_production(settings, second)

    moved = registry.rollback(settings)

    assert (moved.version, moved.previous) == (first, second)
    assert aliases(settings) == {"production": first}
    assert "rolled_back_at" in version_tags(settings, second)
    with pytest.raises(registry.RegistryError, match=f"version {first} replaced no earlier champion"):
        registry.rollback(settings)


def test_the_server_refuses_host_headers_it_was_not_told_to_accept(mlflow_server):
    search = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=10).ok
    refused = requests.post(search, json={"max_results": 1}, headers={"Host": "attacker.example"}, timeout=10)
    assert refused.status_code in (400, 403)


# --- the command line ------------------------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch, tmp_path):
    """Settings from the environment: embedded stores in a fresh data folder, get_settings' cache cleared."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    for name in ("RAW_DB_URL", "CLEAN_DB_URL", "MLFLOW_TRACKING_URI", "MODEL_URI"):
        monkeypatch.setenv(name, "")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_model_commands_promote_roll_back_and_list(environment, good_model, capsys):
    settings = get_settings()
    first, second = log_version(good_model, settings), log_version(good_model, settings)

    assert main(["model", "promote", "1"]) == 0
    assert main(["model", "promote", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "@production -> version 1 (was unset)",
        "@production -> version 2 (was 1)",
    ]
    assert main(["model", "rollback"]) == 0
    assert capsys.readouterr().out == "@production -> version 1 (was 2)\n"
    assert main(["model", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["version", "aliases"]
    assert [row.split()[:2] for row in rows] == [["2", "-"], ["1", "production"]]
    assert main(["model", "promote", "7"]) == 1
    assert capsys.readouterr().err == f"readmission model: error: {settings.model_name} has no version 7\n"

    card = registry.describe_version(settings)
    assert (card["name"], card["version"], card["alias"], card["aliases"]) == (
        settings.model_name,
        first,
        "production",
        ["production"],
    )
    assert card["metrics"]["test_roc_auc"] == pytest.approx(good_model.evaluation.metrics["test_roc_auc"])
    assert card["tags"]["lineage.training_data_sha256"] == good_model.lineage.fingerprint
    assert registry.describe_version(settings, f"models:/{settings.model_name}/{second}")["alias"] is None


def test_train_without_stored_data_says_what_to_do(environment, capsys):
    assert main(["train"]) == 1
    assert "no clean data stored yet: run `readmission ingest` first" in capsys.readouterr().err
