"""Evaluation: metrics at a threshold chosen on validation, figures, permutation importances."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import f1_score, recall_score, roc_auc_score

from readmission import evaluate
from readmission.features import target
from readmission.train import build_pipeline
from tests.factories import labelled_encounters


@pytest.fixture(scope="module")
def splits() -> dict:
    frame = labelled_encounters(rows=3_000, seed=11)
    return {
        name: (rows.reset_index(drop=True), target(rows["readmitted"]).to_numpy())
        for name, rows in frame.groupby("split")
    }


@pytest.fixture(scope="module")
def model(splits):
    rows, labels = splits["train"]
    return build_pipeline(GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0)).fit(rows, labels)


def test_the_threshold_is_the_one_with_the_best_f1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probability = np.clip(0.3 * labels + rng.random(400) * 0.7, 0, 1)
    threshold = evaluate.choose_threshold(labels, probability)
    best = max(f1_score(labels, probability >= t) for t in np.unique(probability))
    assert f1_score(labels, probability >= threshold) == pytest.approx(best)


def test_metrics_at_the_threshold_count_what_they_should():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probability = np.array([0.1, 0.3, 0.6, 0.4, 0.7, 0.9])
    metrics = evaluate.classification_metrics(labels, probability, threshold=0.5)
    # predicted positive: 0.6 (wrong), 0.7 and 0.9 (right); 0.4 is a missed positive
    assert (metrics["precision"], metrics["recall"], metrics["accuracy"]) == pytest.approx((2 / 3, 2 / 3, 4 / 6))
    assert metrics["roc_auc"] == pytest.approx(8 / 9)  # 8 of the 9 positive-negative pairs are ranked right
    assert metrics["brier"] == pytest.approx(np.mean((probability - labels) ** 2))
    assert metrics["positive_rate"] == 0.5 and metrics["rows"] == 6


def test_evaluation_reports_every_metric_per_split_at_the_validation_threshold(model, splits):
    evaluation = evaluate.evaluate(model, {k: splits[k] for k in ("validation", "test")}, figures=False)
    metrics = evaluation.metrics
    for split in ("validation", "test"):
        for name in ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"):
            assert np.isfinite(metrics[f"{split}_{name}"]), f"{split}_{name}"
    validation_rows, validation_labels = splits["validation"]
    expected = evaluate.choose_threshold(validation_labels, evaluate.positive_probability(model, validation_rows))
    assert evaluation.threshold == metrics["decision_threshold"] == pytest.approx(expected)
    assert evaluation.figures == {}


def test_the_figures_are_drawn_as_png(model, splits):
    evaluation = evaluate.evaluate(model, {k: splits[k] for k in ("validation", "test")}, seed=1)
    assert set(evaluation.figures) == {
        "confusion_matrix.png",
        "roc_curve.png",
        "pr_curve.png",
        "calibration.png",
        "reliability_diagram.png",
        "feature_importance.png",
    }
    for name, figure in evaluation.figures.items():
        png = io.BytesIO()
        figure.savefig(png, format="png")
        assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and len(png.getvalue()) > 5_000, name


def test_permutation_importances_rank_the_planted_signal_first(model, splits):
    rows, labels = splits["test"]
    importances = evaluate.feature_importances(model, rows, labels, seed=0)
    assert list(importances) == [
        str(n) for n in sorted(model[:-1].get_feature_names_out(), key=lambda n: -importances[n])
    ]
    top = list(importances)[:3]
    assert {"number_inpatient", "total_prior_visits"} & set(top), top  # the synthetic data's strongest signal
    assert importances["weight_recorded"] == pytest.approx(0.0, abs=0.01)  # nothing planted there


def test_the_rank_auc_of_the_importances_is_roc_auc():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.2 * labels, 1)  # many ties
    assert evaluate._rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_the_expected_calibration_error_of_a_known_example():
    """Ten rows at 0.85 of which half are readmitted (gap 0.35), ten at 0.15 with one readmitted (gap 0.05), ten at
    0.95 all readmitted (gap 0.05): ECE = (10 x 0.35 + 10 x 0.05 + 10 x 0.05) / 30 = 0.15."""
    probability = np.repeat([0.85, 0.15, 0.95], 10)
    labels = np.concatenate([[1] * 5 + [0] * 5, [1] + [0] * 9, [1] * 10])
    assert evaluate.expected_calibration_error(labels, probability) == pytest.approx(0.15)
    # In five bins 0.85 and 0.95 share one: predicted 18 readmissions, 15 seen (gap 3); 1.5 vs 1 in the lowest.
    assert evaluate.expected_calibration_error(labels, probability, bins=5) == pytest.approx(3.5 / 30)


def test_a_perfectly_calibrated_model_has_no_calibration_error_and_every_split_reports_it(model, splits):
    labels = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    probability = np.array([0.2] * 5 + [0.8] * 5)
    assert evaluate.expected_calibration_error(labels, probability) == pytest.approx(0.0)
    metrics = evaluate.evaluate(model, {k: splits[k] for k in ("validation", "test")}, figures=False).metrics
    assert 0 <= metrics["test_ece"] <= 1 and 0 <= metrics["validation_ece"] <= 1


def test_groups_are_scored_with_metricframe_and_small_ones_reported_not_scored(model, splits):
    rows, labels = splits["test"]
    probability = evaluate.positive_probability(model, rows)
    table = evaluate.group_table(rows, labels, probability, threshold=0.5)
    assert set(table["attribute"]) == {"race", "gender", "age_band"}
    for attribute, column in evaluate.GROUP_ATTRIBUTES.items():
        assert table.loc[table["attribute"] == attribute, "encounters"].sum() == len(rows)
        for _, group in table[table["attribute"] == attribute].iterrows():
            members = (rows[column].fillna("?").astype(str) == group["group"]).to_numpy()
            if group["encounters"] < evaluate.MIN_GROUP_ROWS:
                assert group["status"] == "too small" and np.isnan(group["roc_auc"])
                continue
            assert group["status"] == "scored"
            assert group["roc_auc"] == pytest.approx(roc_auc_score(labels[members], probability[members]))
            assert group["positive_rate"] == pytest.approx(np.mean(probability[members] >= 0.5))
            assert group["recall"] == pytest.approx(recall_score(labels[members], probability[members] >= 0.5))
            assert group["ece"] == pytest.approx(
                evaluate.expected_calibration_error(labels[members], probability[members])
            )
    assert (table["status"] == "too small").any() and (table["status"] == "scored").any()
    summary = evaluate.group_summary(table)
    scored = table[table["status"] == "scored"]
    assert summary["roc_auc_worst_group"] == pytest.approx(scored["roc_auc"].min())
    worst = scored.loc[scored["roc_auc"].idxmin()]
    assert summary["worst_group"] == f"{worst['attribute']}={worst['group']}"
