"""Evaluation of a fitted pipeline: metrics on validation and test, the decision threshold, figures.

The threshold is chosen on the validation split (the one that maximizes F1 there, since the
positive class is the minority for the 30-day target and accuracy would favour never
predicting it) and then applied unchanged to the test split. Figures are matplotlib
`Figure` objects drawn off-screen (Agg), for `mlflow.log_figure`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # off-screen: training runs in workers and CI without a display

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from readmission import schema

THRESHOLD_RULE = "maximum F1 on the validation split"
IMPORTANCE_SAMPLE_ROWS = 2_000
IMPORTANCE_REPEATS = 1  # one permutation per feature: each repeat costs another 2,000 x features predictions
IMPORTANCE_CHUNK = 16  # features permuted per predict call (16 x 2,000 rows)
IMPORTANCE_TOP = 20
ECE_BINS = 10
MIN_GROUP_ROWS = 200
# The groups every run is scored on: attribute -> raw column (the data set's own categories).
GROUP_ATTRIBUTES = {"race": "race", "gender": "gender", "age_band": "age"}


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model: `<split>_<metric>` keys, the threshold they use, and the figures."""

    threshold: float
    metrics: dict[str, float]
    importances: dict[str, float] = field(default_factory=dict)  # engineered feature -> drop in test ROC-AUC
    figures: dict[str, Figure] = field(default_factory=dict)  # file name -> figure
    groups: pd.DataFrame | None = None  # `group_table` of the test split (validation without one)


def positive_probability(model: Pipeline | ClassifierMixin, frame: pd.DataFrame) -> np.ndarray:
    """The probability of the positive class (label 1) for each row, from a pipeline or a bare classifier."""
    return model.predict_proba(frame)[:, list(model.classes_).index(1)]


def choose_threshold(y_true: np.ndarray, probability: np.ndarray) -> float:
    """The probability cut that maximizes F1 (see THRESHOLD_RULE)."""
    precision, recall, thresholds = precision_recall_curve(y_true, probability)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    return float(thresholds[np.argmax(f1[:-1])]) if len(thresholds) else 0.5


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: over `bins` equal-width bins of predicted probability, the mean gap between the bin's predicted
    probability and its observed rate of positives, weighted by the bin's share of the rows."""
    y_true, probability = np.asarray(y_true, dtype=float), np.asarray(probability, dtype=float)
    which = np.minimum((probability * bins).astype(int), bins - 1)  # a probability of 1 falls in the last bin
    gaps = np.abs(np.bincount(which, probability, bins) - np.bincount(which, y_true, bins))  # per-bin sums
    return float(gaps.sum() / len(y_true)) if len(y_true) else float("nan")


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    """Ranking, calibration and thresholded metrics of one split."""
    predicted = (probability >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "roc_auc": roc_auc_score(y_true, probability) if both_classes else float("nan"),
        "pr_auc": average_precision_score(y_true, probability) if both_classes else float("nan"),
        "accuracy": accuracy_score(y_true, predicted),
        "precision": precision_score(y_true, predicted, zero_division=0),
        "recall": recall_score(y_true, predicted, zero_division=0),
        "f1": f1_score(y_true, predicted, zero_division=0),
        "log_loss": log_loss(y_true, probability, labels=[0, 1]),
        "brier": brier_score_loss(y_true, probability),
        "ece": expected_calibration_error(y_true, probability),
        "positive_rate": float(np.mean(y_true)),
        "rows": float(len(y_true)),
    }


def group_table(rows: pd.DataFrame, y_true: np.ndarray, probability: np.ndarray, threshold: float,
                min_rows: int = MIN_GROUP_ROWS) -> pd.DataFrame:  # fmt: skip
    """ROC-AUC, ECE, positive rate (share predicted positive at `threshold`) and recall of each group of
    `GROUP_ATTRIBUTES`, computed by fairlearn's MetricFrame; one row per group.

    A group of fewer than `min_rows` encounters is listed as too small, its metrics left empty: on a
    few dozen rows they would say more about chance than about the model.
    """
    from fairlearn.metrics import MetricFrame

    y_true, probability = np.asarray(y_true), np.asarray(probability, dtype=float)

    def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        # One metric returning them all: MetricFrame copies each group's rows once per metric function. ROC-AUC
        # and recall without scikit-learn's per-call checks, which cost more than the figures (same values).
        positive, predicted = y == 1, p >= threshold
        return {"roc_auc": _rank_auc(y, p) if 0 < positive.sum() < len(y) else float("nan"),
                "ece": expected_calibration_error(y, p), "positive_rate": float(np.mean(predicted)),
                "recall": float(np.mean(predicted[positive])) if positive.any() else 0.0,
                "readmitted_rate": float(np.mean(y)), "encounters": len(y)}  # fmt: skip

    tables = []
    for attribute, column in GROUP_ATTRIBUTES.items():
        frame = MetricFrame(metrics={"scores": scores}, y_true=y_true, y_pred=probability,
                            sensitive_features=rows[column].fillna(schema.MISSING).astype(str).rename(attribute))  # fmt: skip
        by_group = frame.by_group["scores"]
        table = pd.DataFrame(list(by_group), index=by_group.index).reset_index().rename(columns={attribute: "group"})
        table.insert(0, "attribute", attribute)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table["encounters"] = table["encounters"].astype(int)
    table["status"] = np.where(table["encounters"] >= min_rows, "scored", "too small")
    scored = ["roc_auc", "ece", "positive_rate", "recall", "readmitted_rate"]
    table[scored] = table[scored].astype(float).where(table["status"] == "scored")
    return table[["attribute", "group", "encounters", "status", *scored]]


def group_summary(table: pd.DataFrame) -> dict[str, float | str]:
    """The worst scored group's ROC-AUC (and which group it is), and the largest ROC-AUC gap within an attribute."""
    scored = table[(table["status"] == "scored") & table["roc_auc"].notna()]
    if scored.empty:
        return {}
    worst = scored.loc[scored["roc_auc"].idxmin()]
    gap = scored.groupby("attribute")["roc_auc"].agg(lambda auc: auc.max() - auc.min()).max()
    return {"roc_auc_worst_group": float(worst["roc_auc"]), "roc_auc_group_gap": float(gap),
            "worst_group": f"{worst['attribute']}={worst['group']}"}  # fmt: skip


def evaluate(model: Pipeline, splits: dict[str, tuple[pd.DataFrame, np.ndarray]], *, figures: bool = True,
             seed: int = 0) -> Evaluation:  # fmt: skip
    """Score `model` on each split (`validation` is required: it picks the threshold) and draw the test figures."""
    probabilities = {name: positive_probability(model, frame) for name, (frame, _) in splits.items()}
    threshold = choose_threshold(splits["validation"][1], probabilities["validation"])
    metrics = {"decision_threshold": threshold}
    for name, (_, y_true) in splits.items():
        metrics |= {f"{name}_{key}": float(value) for key, value in
                    classification_metrics(y_true, probabilities[name], threshold).items()}  # fmt: skip
    report = "test" if "test" in splits else "validation"
    frame, y_true = splits[report]
    groups = group_table(frame, y_true, probabilities[report], threshold)
    summary = group_summary(groups)
    metrics |= {f"{report}_{key}": float(value) for key, value in summary.items() if key != "worst_group"}
    if not figures:
        return Evaluation(threshold, metrics, groups=groups)
    importances = feature_importances(model, frame, y_true, seed=seed)
    drawn = draw_figures(y_true, probabilities[report], threshold, importances, report)
    return Evaluation(threshold, metrics, importances, drawn, groups)


def feature_importances(model: Pipeline, frame: pd.DataFrame, y_true: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Permutation importance (mean drop in ROC-AUC) of each engineered feature, on a sample of rows.

    Permuting the transformer's output rather than the raw columns gives one figure per
    feature the classifier sees, whichever classifier it is. The permuted copies are stacked
    and scored in a few large `predict_proba` calls, spread over the machine's cores: per-call
    overhead, not trees, is what makes sklearn's one-call-per-permutation version slow.
    """
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(frame))[:IMPORTANCE_SAMPLE_ROWS]
    labels = y_true[rows]
    if len(np.unique(labels)) < 2:
        return {}
    features = model[:-1].transform(frame.iloc[rows])
    classifier, values, n = model[-1], features.to_numpy(dtype=float), len(rows)
    base = _rank_auc(labels, positive_probability(classifier, features))
    shuffles = {column: [rng.permutation(n) for _ in range(IMPORTANCE_REPEATS)] for column in range(values.shape[1])}

    def permuted_scores(columns: range) -> np.ndarray:
        with threadpool_limits(limits=1, user_api="openmp"):  # one core per chunk (see readmission.train)
            copies = []
            for column in columns:
                for shuffle in shuffles[column]:
                    copy = values.copy()
                    copy[:, column] = copy[shuffle, column]
                    copies.append(copy)
            return positive_probability(classifier, pd.DataFrame(np.concatenate(copies), columns=features.columns))

    chunks = [range(first, min(first + IMPORTANCE_CHUNK, values.shape[1]))
              for first in range(0, values.shape[1], IMPORTANCE_CHUNK)]  # fmt: skip
    drops = np.zeros(values.shape[1])
    scored = Parallel(n_jobs=min(len(chunks), os.cpu_count() or 1), prefer="threads")(
        delayed(permuted_scores)(columns) for columns in chunks)  # fmt: skip
    for columns, scores in zip(chunks, scored, strict=True):
        for i, column in enumerate(columns):
            repeats = scores[i * IMPORTANCE_REPEATS * n : (i + 1) * IMPORTANCE_REPEATS * n].reshape(
                IMPORTANCE_REPEATS, n
            )
            drops[column] = base - np.mean([_rank_auc(labels, repeat) for repeat in repeats])
    order = np.argsort(-drops, kind="stable")
    return {str(features.columns[i]): float(drops[i]) for i in order}


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: what roc_auc_score computes, without its per-call checks
    (which cost more than the computation when called hundreds of times on small samples)."""
    positive = labels == 1
    n_positive, n_negative = positive.sum(), (~positive).sum()
    return float((rankdata(scores)[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def reliability_diagram(y_true: np.ndarray, probability: np.ndarray, split: str = "test") -> Figure:
    """Observed rate of readmission against predicted probability in ECE_BINS equal-width bins, with the
    number of encounters in each bin below: the bins the ECE is computed on."""
    figure = Figure(figsize=(6, 6), layout="constrained")
    curve, counts = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    CalibrationDisplay.from_predictions(y_true, probability, n_bins=ECE_BINS, strategy="uniform", ax=curve,
                                        name="model")  # fmt: skip
    curve.set_xlabel("")
    counts.hist(probability, bins=np.linspace(0, 1, ECE_BINS + 1), color="#607d8b")
    counts.set_xlabel("predicted probability of readmission")
    counts.set_ylabel("encounters")
    figure.suptitle(f"{split}: reliability diagram, ECE {expected_calibration_error(y_true, probability):.3f}, "
                    f"Brier {brier_score_loss(y_true, probability):.3f}")  # fmt: skip
    return figure


def draw_figures(y_true: np.ndarray, probability: np.ndarray, threshold: float, importances: dict[str, float],
                 split: str = "test") -> dict[str, Figure]:  # fmt: skip
    """Confusion matrix, ROC and precision-recall curves, calibration and the top feature importances."""
    figures = {name: Figure(figsize=(6, 5), layout="constrained") for name in
               ("confusion_matrix.png", "roc_curve.png", "pr_curve.png", "calibration.png")}  # fmt: skip
    ConfusionMatrixDisplay.from_predictions(y_true, (probability >= threshold).astype(int), labels=[0, 1],
                                            ax=figures["confusion_matrix.png"].subplots(), colorbar=False)  # fmt: skip
    figures["confusion_matrix.png"].suptitle(f"{split}: confusion matrix at threshold {threshold:.3f}")
    RocCurveDisplay.from_predictions(
        y_true, probability, ax=figures["roc_curve.png"].subplots(), plot_chance_level=True
    )
    figures["roc_curve.png"].suptitle(f"{split}: ROC curve")
    PrecisionRecallDisplay.from_predictions(y_true, probability, ax=figures["pr_curve.png"].subplots(),
                                            plot_chance_level=True)  # fmt: skip
    figures["pr_curve.png"].suptitle(f"{split}: precision-recall curve")
    CalibrationDisplay.from_predictions(y_true, probability, n_bins=10, strategy="quantile",
                                        ax=figures["calibration.png"].subplots())  # fmt: skip
    figures["calibration.png"].suptitle(f"{split}: calibration (deciles of predicted probability)")
    figures["reliability_diagram.png"] = reliability_diagram(y_true, probability, split)
    top = list(importances.items())[:IMPORTANCE_TOP][::-1]
    importance = Figure(figsize=(7, 6), layout="constrained")
    axes = importance.subplots()
    axes.barh([name for name, _ in top], [value for _, value in top])
    axes.set_xlabel("mean drop in ROC-AUC when permuted")
    importance.suptitle(f"{split}: permutation importance of the top {len(top)} features")
    figures["feature_importance.png"] = importance
    return figures
