"""The promotion gate (`readmission.model.gate`): on the real `mlflow server` (Dockerfile_mlflow's command) with
its backend store in MariaDB and its artifacts in S3, and on the embedded store."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from readmission.model import gate, registry
from readmission.train import Candidate, train_model
from tests.factories import aliases, labelled_encounters, log_version, model_keys, model_test_rows, version_tags

# --- the decision on overall ROC-AUC ----------------------------------------------------------------------


def test_a_challenger_that_beats_the_champion_but_sits_below_the_floor_is_kept():
    decision, reason = gate.compare(0.58, 0.55, "3", floor=0.60, tolerance=0.005)
    assert decision == gate.KEPT and "below the floor 0.6" in reason


def test_a_challenger_worse_than_the_champion_but_within_the_tolerance_is_promoted():
    decision, reason = gate.compare(0.698, 0.700, "3", floor=0.60, tolerance=0.005)
    assert decision == gate.PROMOTED and "within the tolerance 0.005" in reason


def test_a_challenger_worse_than_the_champion_by_more_than_the_tolerance_is_kept():
    decision, reason = gate.compare(0.690, 0.700, "3", floor=0.60, tolerance=0.005)
    assert decision == gate.KEPT and "lower by more than the tolerance 0.005" in reason


# --- the gate on registered versions ----------------------------------------------------------------------


def test_the_first_model_is_promoted_when_it_clears_the_floor(on_server, plain_model):
    settings = on_server(promotion_min_auc=0.6)
    version = log_version(plain_model, settings)
    decision = gate.run_gate(settings, version, model_test_rows())
    assert decision.promoted and decision.champion_version is None and decision.challenger_auc > 0.6
    assert aliases(settings) == {"production": version}
    tags = version_tags(settings, version)
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_roc_auc"] == "none"
    assert float(tags["gate.challenger_roc_auc"]) == pytest.approx(decision.challenger_auc, abs=1e-6)


def test_a_first_model_below_the_floor_is_only_a_challenger(on_server, chance_model):
    settings = on_server(promotion_min_auc=0.75)
    version = log_version(chance_model, settings)
    decision = gate.run_gate(settings, version, model_test_rows())
    assert decision.decision == "kept_as_challenger" and "below the floor 0.75" in decision.reason
    assert aliases(settings) == {"challenger": version}


def test_a_better_challenger_takes_production_and_remembers_the_champion(on_server, plain_model, chance_model):
    settings = on_server(promotion_min_auc=0.4)
    champion = log_version(chance_model, settings)
    gate.run_gate(settings, champion, model_test_rows())
    challenger = log_version(plain_model, settings)

    decision = gate.run_gate(settings, challenger, model_test_rows())

    assert decision.promoted and decision.champion_version == champion
    assert decision.challenger_auc > decision.champion_auc + 0.1
    assert aliases(settings) == {"production": challenger}
    tags = version_tags(settings, challenger)
    assert tags["previous_champion"] == champion and tags["gate.champion_version"] == champion
    assert float(tags["gate.champion_roc_auc"]) == pytest.approx(decision.champion_auc, abs=1e-6)


def test_a_worse_challenger_is_kept_as_challenger(on_server, plain_model, chance_model):
    settings = on_server(promotion_min_auc=0.4, promotion_tolerance=0.01)
    champion = log_version(plain_model, settings)
    gate.run_gate(settings, champion, model_test_rows())
    challenger = log_version(chance_model, settings)

    decision = gate.run_gate(settings, challenger, model_test_rows())

    assert decision.decision == "kept_as_challenger" and "lower by more than the tolerance 0.01" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}
    tags = version_tags(settings, challenger)
    assert float(tags["gate.challenger_roc_auc"]) < float(tags["gate.champion_roc_auc"]) - 0.01


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
    champion = log_version(train_model(encounters, settings, deeper, figures=False), settings)
    gate.run_gate(settings, champion, test_rows)
    challenger = log_version(train_model(noisy, settings, deeper, figures=False), settings)

    decision = gate.run_gate(settings, challenger, test_rows)

    assert decision.decision == "kept_as_challenger"
    assert "worst-group ROC-AUC" in decision.reason and "(gender=Female)" in decision.reason
    assert "PROMOTION_GROUP_TOLERANCE" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}
    tags = version_tags(settings, challenger)
    assert tags["gate.challenger_worst_group"] == "gender=Female" and tags["gate.group_tolerance"] == "0.020000"
    assert float(tags["gate.challenger_worst_group_roc_auc"]) < float(tags["gate.champion_worst_group_roc_auc"]) - 0.02

    looser = make_settings(promotion_min_auc=0.5, promotion_tolerance=0.5, promotion_group_tolerance=0.5)
    assert gate.run_gate(looser, challenger, test_rows).promoted


def test_a_champion_whose_artifact_is_missing_is_not_replaced_blindly(on_server, mlflow_server, plain_model):
    settings = on_server()
    champion = log_version(plain_model, settings)
    registry.set_production(settings, champion)
    for key in model_keys(settings, champion, mlflow_server):
        mlflow_server.s3.client().delete_object(Bucket=mlflow_server.bucket, Key=key)
    challenger = log_version(plain_model, settings)

    decision = gate.run_gate(settings, challenger, model_test_rows())

    assert decision.decision == "refused" and decision.champion_auc is None and decision.challenger_auc > 0.6
    assert f"champion version {champion} could not be loaded" in decision.reason
    assert aliases(settings) == {"production": champion, "challenger": challenger}
    assert version_tags(settings, challenger)["gate.reason"] == decision.reason


def test_a_champion_whose_artifact_is_unreadable_is_not_replaced_blindly(on_server, mlflow_server, plain_model):
    settings = on_server()
    champion = log_version(plain_model, settings)
    registry.set_production(settings, champion)
    (skops_key,) = [k for k in model_keys(settings, champion, mlflow_server) if k.endswith("pipeline.skops")]
    mlflow_server.s3.client().put_object(Bucket=mlflow_server.bucket, Key=skops_key, Body=b"not a skops file")
    challenger = log_version(plain_model, settings)

    decision = gate.run_gate(settings, challenger, model_test_rows())

    assert decision.decision == "refused" and f"champion version {champion} could not be loaded" in decision.reason
    assert aliases(settings)["production"] == champion
