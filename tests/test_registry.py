"""MLflow logging, the registry and the promotion gate: on the embedded store, and on the real
`mlflow server` (Dockerfile_mlflow's command) with its backend store in MariaDB and its artifacts in S3."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

from readmission import mlflow_model, registry, schema
from readmission import train as training
from readmission.cli import main
from readmission.config import Settings, get_settings
from readmission.features import EncounterFeatures, target
from readmission.train import Candidate, TrainingResult, train
from tests.factories import labelled_encounters, signature_types

ENCOUNTERS = labelled_encounters(rows=4_000, seed=21)
TEST_ROWS = ENCOUNTERS[ENCOUNTERS["split"] == "test"].reset_index(drop=True)
TREES = {"n_estimators": 30, "max_depth": 2, "random_state": 0}


def small_boosting() -> list[Candidate]:
    return [Candidate("gradient_boosting", GradientBoostingClassifier(**TREES))]


@pytest.fixture(scope="module")
def good_model() -> TrainingResult:
    """A small model of the synthetic data's planted signal, with its figures."""
    return train(ENCOUNTERS, Settings(_env_file=None), small_boosting(), figures=True)


@pytest.fixture(scope="module")
def plain_model(good_model) -> TrainingResult:
    """`good_model` without its figures: quicker to log, where the figures are not the point."""
    return dataclasses.replace(good_model, evaluation=dataclasses.replace(good_model.evaluation, figures={}))


@pytest.fixture(scope="module")
def chance_model() -> TrainingResult:
    """The same model trained on shuffled labels: it ranks test rows at chance."""
    shuffled = ENCOUNTERS.copy()
    in_train = shuffled["split"] == "train"
    shuffled.loc[in_train, "readmitted"] = np.random.default_rng(0).permutation(shuffled.loc[in_train, "readmitted"])
    return train(shuffled, Settings(_env_file=None), small_boosting(), figures=False)


@pytest.fixture
def on_server(make_settings, mlflow_server):
    """Settings on the session's MLflow server, with a model name and an experiment of this test's own."""

    def factory(**overrides) -> Settings:
        name = f"readmission-{uuid.uuid4().hex[:10]}"
        return make_settings(mlflow_tracking_uri=mlflow_server.url, model_name=name, mlflow_experiment=name,
                             **overrides)  # fmt: skip

    return factory


def log(result: TrainingResult, settings: Settings) -> str:
    """Log and register `result`; its version number as text (the stores differ: int or str)."""
    return str(registry.log_training(result, settings).version)


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return registry.client(settings).get_model_version(settings.model_name, version).tags


def aliases(settings: Settings) -> dict[str, str]:
    """alias -> version of the registered model."""
    model = registry.client(settings).get_registered_model(settings.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def model_keys(settings: Settings, version: str, mlflow_server) -> list[str]:
    """The S3 keys of a registered version's model artifacts."""
    source = registry.client(settings).get_model_version(settings.model_name, version).source  # models:/<model id>
    return mlflow_server.s3.keys(mlflow_server.bucket, containing=f"/{source.removeprefix('models:/')}/")


# --- the embedded store ----------------------------------------------------------------------------------


def test_the_embedded_store_keeps_its_artifacts_in_the_data_folder(make_settings, good_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = make_settings()
    version = registry.log_training(good_model, settings)
    experiment = registry.client(settings).get_experiment_by_name(settings.mlflow_experiment)
    assert settings.mlflow_tracking_uri == f"sqlite:///{settings.data_dir.resolve() / 'mlflow.db'}"
    assert experiment.artifact_location == settings.artifacts_dir.as_uri()
    assert list(settings.artifacts_dir.rglob("pipeline.skops")), "the model is not under artifacts_dir"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "something was written outside DATA_DIR"
    assert str(version.version) == "1"


def test_a_run_logs_params_metrics_figures_lineage_and_a_model_of_raw_columns(make_settings, good_model, tmp_path):
    settings = make_settings()
    version = registry.log_training(good_model, settings)
    client = registry.client(settings)
    run = client.get_run(version.run_id)
    assert run.data.params["classifier"] == "GradientBoostingClassifier"
    assert run.data.params["classifier.n_estimators"] == "30" and run.data.params["target"] == "any"
    for split in ("validation", "test"):
        for name in ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"):
            assert run.data.metrics[f"{split}_{name}"] == pytest.approx(good_model.evaluation.metrics[f"{split}_{name}"])
    assert run.data.metrics["decision_threshold"] == pytest.approx(good_model.evaluation.threshold)
    lineage = good_model.lineage.tags()
    assert {k: run.data.tags[k] for k in lineage} == lineage == {k: version.tags[k] for k in lineage}
    assert version.tags["run_id"] == run.info.run_id and version.tags["target"] == "any"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{n}" for n in ("confusion_matrix.png", "roc_curve.png", "pr_curve.png", "calibration.png",
                                            "reliability_diagram.png", "feature_importance.png")}  # fmt: skip
    for name in ("test_ece", "test_brier", "test_roc_auc_worst_group", "test_roc_auc_group_gap"):
        assert run.data.metrics[name] == pytest.approx(good_model.evaluation.metrics[name])
    groups = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{registry.GROUP_ARTIFACT}")
    assert groups == registry.group_records(good_model.evaluation.groups)
    assert {row["attribute"] for row in groups} == {"race", "gender", "age_band"}
    assert any(row["status"] == "too small" and row["roc_auc"] is None for row in groups)

    model = mlflow.models.get_model_info(f"models:/{settings.model_name}/{version.version}")
    types = signature_types(model.signature)
    assert sorted(types) == sorted(schema.FEATURE_INPUT_COLUMNS)
    assert {name for name, kind in types.items() if kind == "long"} == set(mlflow_model.INTEGER_COLUMNS)
    assert {kind for name, kind in types.items() if name not in mlflow_model.INTEGER_COLUMNS} == {"string"}
    assert model.saved_input_example_info is not None
    assert model.flavors["python_function"]["artifacts"]["pipeline"]["path"].endswith("pipeline.skops")


def test_calibrated_hist_gradient_boosting_models_trust_their_own_types_only():
    hist = Candidate("hist_gradient_boosting", HistGradientBoostingClassifier(max_iter=5))
    model = train(ENCOUNTERS, Settings(_env_file=None), [hist], figures=False).model
    assert mlflow_model.trusted_types(model) == ["readmission.features.EncounterFeatures",
                                             "sklearn.calibration._CalibratedClassifier",
                                             "sklearn.calibration._SigmoidCalibration",
                                             "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


class Doubling(TransformerMixin, BaseEstimator):
    """A transformer of a type nobody declared trusted."""

    def fit(self, X, y=None):  # noqa: N803
        return self

    def transform(self, X):  # noqa: N803
        return X * 2


def test_a_model_holding_an_undeclared_type_is_refused_not_pickled():
    rows, labels = ENCOUNTERS, target(ENCOUNTERS["readmitted"]).to_numpy()
    model = Pipeline([("features", EncounterFeatures()), ("doubling", Doubling()),
                      ("classifier", GradientBoostingClassifier(n_estimators=2))]).fit(rows, labels)  # fmt: skip
    with pytest.raises(ValueError, match=r"not in SKOPS_TRUSTED_TYPES: \['tests.test_registry.Doubling'\]"):
        mlflow_model.trusted_types(model)


# --- the real MLflow server: MariaDB backend store, S3 artifacts -------------------------------------------


def test_train_register_promote_and_predict_from_a_fresh_process(environment, monkeypatch, mlflow_server,
                                                                  synthetic_csv, tmp_path, capsys):  # fmt: skip
    name = f"readmission-{uuid.uuid4().hex[:10]}"
    for variable, value in {"MLFLOW_TRACKING_URI": mlflow_server.url, "MODEL_NAME": name, "MLFLOW_EXPERIMENT": name}.items():
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
    expected = registry.load_pipeline(settings=settings).predict_proba(rows)[:, 1]  # models:/<name>@production
    # A data scientist's three lines, in a fresh process: the file as pandas reads it, through MLflow's own loader.
    fresh = subprocess.run(
        [sys.executable, "-c", "import mlflow, pandas as pd;"
         f"model = mlflow.pyfunc.load_model('models:/{settings.model_name}@production');"
         f"print(model.predict(pd.read_csv('{synthetic_csv}', nrows=50)).to_json(orient='split'))"],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow_server.url},
        cwd=tmp_path,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    answer = json.loads(fresh.stdout.splitlines()[-1])
    assert answer["columns"] == ["readmission_probability"]
    probabilities = np.array(answer["data"]).ravel()
    assert probabilities == pytest.approx(expected) and len(np.unique(probabilities)) > 10


def test_the_first_model_is_promoted_when_it_clears_the_floor(on_server, plain_model):
    settings = on_server(promotion_min_auc=0.6)
    version = log(plain_model, settings)
    decision = registry.run_gate(settings, version, TEST_ROWS)
    assert decision.promoted and decision.champion_version is None and decision.challenger_auc > 0.6
    assert aliases(settings) == {"production": version}
    tags = version_tags(settings, version)
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_roc_auc"] == "none"
    assert float(tags["gate.challenger_roc_auc"]) == pytest.approx(decision.challenger_auc, abs=1e-6)


def test_a_first_model_below_the_floor_is_only_a_challenger(on_server, chance_model):
    settings = on_server(promotion_min_auc=0.75)
    version = log(chance_model, settings)
    decision = registry.run_gate(settings, version, TEST_ROWS)
    assert decision.decision == "kept_as_challenger" and "below the floor 0.75" in decision.reason
    assert aliases(settings) == {"challenger": version}


def test_a_better_challenger_takes_production_and_remembers_the_champion(on_server, plain_model, chance_model):
    settings = on_server(promotion_min_auc=0.4)
    champion = log(chance_model, settings)
    registry.run_gate(settings, champion, TEST_ROWS)
    challenger = log(plain_model, settings)

    decision = registry.run_gate(settings, challenger, TEST_ROWS)

    assert decision.promoted and decision.champion_version == champion
    assert decision.challenger_auc > decision.champion_auc + 0.1
    assert aliases(settings) == {"production": challenger}
    tags = version_tags(settings, challenger)
    assert tags["previous_champion"] == champion and tags["gate.champion_version"] == champion
    assert float(tags["gate.champion_roc_auc"]) == pytest.approx(decision.champion_auc, abs=1e-6)


def test_a_worse_challenger_is_kept_as_challenger(on_server, plain_model, chance_model):
    settings = on_server(promotion_min_auc=0.4, promotion_tolerance=0.01)
    champion = log(plain_model, settings)
    registry.run_gate(settings, champion, TEST_ROWS)
    challenger = log(chance_model, settings)

    decision = registry.run_gate(settings, challenger, TEST_ROWS)

    assert decision.decision == "kept_as_challenger" and "lower by more than the tolerance 0.01" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}
    tags = version_tags(settings, challenger)
    assert float(tags["gate.challenger_roc_auc"]) < float(tags["gate.champion_roc_auc"]) - 0.01


def test_a_challenger_better_than_the_champion_but_below_the_floor_stays_a_challenger(
    make_settings, plain_model, chance_model
):
    champion = log(chance_model, make_settings(promotion_min_auc=0.4))
    registry.run_gate(make_settings(promotion_min_auc=0.4), champion, TEST_ROWS)
    settings = make_settings(promotion_min_auc=0.99)
    challenger = log(plain_model, settings)

    decision = registry.run_gate(settings, challenger, TEST_ROWS)

    assert decision.challenger_auc > decision.champion_auc + 0.1
    assert decision.decision == "kept_as_challenger" and "below the floor 0.99" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}


def test_a_challenger_worse_than_the_champion_but_within_the_tolerance_is_promoted(
    make_settings, plain_model, chance_model
):
    settings = make_settings(promotion_min_auc=0.4, promotion_tolerance=0.5, promotion_group_tolerance=1.0)
    champion = log(plain_model, settings)
    registry.run_gate(settings, champion, TEST_ROWS)
    challenger = log(chance_model, settings)

    decision = registry.run_gate(settings, challenger, TEST_ROWS)

    assert decision.challenger_auc < decision.champion_auc - 0.1
    assert decision.promoted and "within the tolerance 0.5" in decision.reason
    assert aliases(settings) == {"production": challenger}
    assert version_tags(settings, challenger)["previous_champion"] == champion


def test_a_challenger_worse_on_one_patient_group_is_refused_naming_the_group(make_settings):
    """The challenger learnt from data whose women's labels are noise: as good overall within a loose tolerance,
    far worse for women than the champion, so PROMOTION_GROUP_TOLERANCE keeps it out of production."""
    encounters = labelled_encounters(rows=6_000, seed=21)
    noisy = encounters.copy()
    women = (noisy["split"] == "train") & (noisy["gender"] == "Female")
    noisy.loc[women, "readmitted"] = np.random.default_rng(0).choice(["NO", "<30"], women.sum())
    deeper = [Candidate("gradient_boosting", GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0))]
    settings = make_settings(promotion_min_auc=0.5, promotion_tolerance=0.5)
    test_rows = encounters[encounters["split"] == "test"].reset_index(drop=True)
    champion = log(train(encounters, settings, deeper, figures=False), settings)
    registry.run_gate(settings, champion, test_rows)
    challenger = log(train(noisy, settings, deeper, figures=False), settings)

    decision = registry.run_gate(settings, challenger, test_rows)

    assert decision.decision == "kept_as_challenger"
    assert "worst-group ROC-AUC" in decision.reason and "(gender=Female)" in decision.reason
    assert "PROMOTION_GROUP_TOLERANCE" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}
    tags = version_tags(settings, challenger)
    assert tags["gate.challenger_worst_group"] == "gender=Female" and tags["gate.group_tolerance"] == "0.020000"
    assert float(tags["gate.challenger_worst_group_roc_auc"]) < float(tags["gate.champion_worst_group_roc_auc"]) - 0.02

    looser = make_settings(promotion_min_auc=0.5, promotion_tolerance=0.5, promotion_group_tolerance=0.5)
    assert registry.run_gate(looser, challenger, test_rows).promoted


def test_rollback_returns_production_to_the_previous_champion(on_server, plain_model):
    settings = on_server()
    first = log(plain_model, settings)
    second = log(plain_model, settings)
    registry.promote(settings, first)
    registry.promote(settings, second)

    moved = registry.rollback(settings)

    assert (moved.version, moved.previous) == (first, second)
    assert aliases(settings) == {"production": first}
    assert "rolled_back_at" in version_tags(settings, second)
    with pytest.raises(registry.RegistryError, match=f"version {first} replaced no earlier champion"):
        registry.rollback(settings)


def test_a_champion_whose_artifact_is_missing_is_not_replaced_blindly(on_server, mlflow_server, plain_model):
    settings = on_server()
    champion = log(plain_model, settings)
    registry.promote(settings, champion)
    for key in model_keys(settings, champion, mlflow_server):
        mlflow_server.s3.client().delete_object(Bucket=mlflow_server.bucket, Key=key)
    challenger = log(plain_model, settings)

    decision = registry.run_gate(settings, challenger, TEST_ROWS)

    assert decision.decision == "refused" and decision.champion_auc is None and decision.challenger_auc > 0.6
    assert f"champion version {champion} could not be loaded" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}
    assert version_tags(settings, challenger)["gate.reason"] == decision.reason


def test_a_champion_whose_artifact_is_unreadable_is_not_replaced_blindly(on_server, mlflow_server, plain_model):
    settings = on_server()
    champion = log(plain_model, settings)
    registry.promote(settings, champion)
    (skops_key,) = [k for k in model_keys(settings, champion, mlflow_server) if k.endswith("pipeline.skops")]
    mlflow_server.s3.client().put_object(Bucket=mlflow_server.bucket, Key=skops_key, Body=b"not a skops file")
    challenger = log(plain_model, settings)

    decision = registry.run_gate(settings, challenger, TEST_ROWS)

    assert decision.decision == "refused" and f"champion version {champion} could not be loaded" in decision.reason
    assert aliases(settings)["production"] == champion


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
    first, second = log(good_model, settings), log(good_model, settings)

    assert main(["model", "promote", "1"]) == 0
    assert main(["model", "promote", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["@production -> version 1 (was unset)",
                                                    "@production -> version 2 (was 1)"]  # fmt: skip
    assert main(["model", "rollback"]) == 0
    assert capsys.readouterr().out == "@production -> version 1 (was 2)\n"
    assert main(["model", "list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["version", "aliases"]
    assert [row.split()[:2] for row in rows] == [["2", "-"], ["1", "production"]]
    assert main(["model", "promote", "7"]) == 1
    assert capsys.readouterr().err == f"readmission model: error: {settings.model_name} has no version 7\n"

    card = registry.model_metadata(settings=settings)
    assert (card["name"], card["version"], card["alias"], card["aliases"]) == (settings.model_name, first, "production",
                                                                               ["production"])  # fmt: skip
    assert card["metrics"]["test_roc_auc"] == pytest.approx(good_model.evaluation.metrics["test_roc_auc"])
    assert card["tags"]["lineage.training_data_sha256"] == good_model.lineage.fingerprint
    assert registry.model_metadata(f"models:/{settings.model_name}/{second}", settings)["alias"] is None


def test_train_without_stored_data_says_what_to_do(environment, capsys):
    assert main(["train"]) == 1
    assert "no clean data stored yet: run `readmission ingest` first" in capsys.readouterr().err
