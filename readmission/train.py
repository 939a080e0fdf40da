"""Training: candidate pipelines fitted on the train split, the best one chosen on validation.

Every candidate is `EncounterFeatures` followed by a classifier, so the chosen model takes
raw encounter columns and nothing else. The candidates are the reference
GradientBoosting configuration and a small HistGradientBoosting search with early stopping;
the one with the highest validation ROC-AUC wins. Its calibrated candidate, the same trees with
Platt's sigmoid fitted on the validation split (never the test split), replaces it when its
validation ROC-AUC is at least as high (a sigmoid only reverses the ranking when the trees rank
worse than chance); the chosen model is evaluated once on test.

The features are computed once and shared by every candidate (the transformer learns
nothing from the data: its vocabularies are constants). Candidates are fitted two at a time
on the machine's cores, each on one core: GradientBoosting is single-threaded, and the OpenMP
threads of HistGradientBoosting spin-wait rather than work when they compete with other busy
threads for the cores (we measured a 15x slow-down on a loaded 2-core machine), so training
runs with one OpenMP thread per Python thread.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from readmission import drift, encounter_columns
from readmission.config import Settings
from readmission.evaluate import Evaluation, evaluate, positive_probability
from readmission.features import EncounterFeatures, target
from readmission.model import tags
from readmission.split import SPLITS

PACKAGE = "readmission"
CALIBRATION = "sigmoid"  # Platt scaling: a straight line on the log-odds, so explanations stay exact
CALIBRATED_SUFFIX = "_calibrated"
INPUT_EXAMPLE_ROWS = 5

# The reference configuration the issue names: 200 trees of depth 3, learning rate 0.05.
REFERENCE_PARAMS: dict[str, Any] = {"n_estimators": 200, "learning_rate": 0.05, "max_depth": 3}
# HistGradientBoosting search: a handful of settings, each stopped early on a 10% holdout of train.
# Learning rates of 0.1 and above with feature subsampling: on the real data they reach the
# validation ROC-AUC of learning rate 0.05 in a fraction of the trees. Together they cost about
# what the reference GradientBoosting costs on its own, so the reference on one core and the
# search on the other finish together (the README's benchmark table has the figures).
# Slowest first, so that both cores stay busy until the end.
# More inpatient admissions in the past year never lower the risk a HistGradientBoosting model gives (the
# prior-visit total they add to included): clinically expected, and what a clinician reading the factors
# relies on. GradientBoostingClassifier has no such constraint in scikit-learn.
HIST_MONOTONIC: dict[str, int] = {"number_inpatient": 1, "total_prior_visits": 1}
HIST_EARLY_STOPPING: dict[str, Any] = {
    "max_iter": 1_000,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "monotonic_cst": HIST_MONOTONIC,
}
HIST_SEARCH: tuple[dict[str, Any], ...] = (
    {"learning_rate": 0.1, "n_iter_no_change": 20, "max_leaf_nodes": 31, "min_samples_leaf": 50, "max_features": 0.5},
    {
        "learning_rate": 0.15,
        "n_iter_no_change": 10,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 100,
        "l2_regularization": 1.0,
        "max_features": 0.5,
    },
    {
        "learning_rate": 0.2,
        "n_iter_no_change": 10,
        "max_leaf_nodes": 15,
        "min_samples_leaf": 100,
        "l2_regularization": 1.0,
        "max_features": 0.5,
    },
)


@dataclass(frozen=True)
class Candidate:
    """A named, unfitted classifier to put after the feature transformer.

    `sparse`: fit it on the features as a sparse matrix. Most features are zero (one-hot
    levels, medications not given, no prior visits); GradientBoosting's exact splitter then
    sorts only the non-zero values: the same trees (identical predictions), in about half the
    time. Predictions still take the dense features the pipeline passes.
    """

    name: str
    classifier: BaseEstimator
    sparse: bool = False


@dataclass(frozen=True)
class Lineage:
    """What a model was trained on and with: batches, rows per split, data fingerprint, code version."""

    batches: tuple[int, ...]
    rows: dict[str, int]
    fingerprint: str
    package_version: str
    git_commit: str

    def tags(self) -> dict[str, str]:
        """The lineage as MLflow tags (strings)."""
        return {
            tags.LINEAGE_BATCHES: ",".join(map(str, self.batches)),
            **{tags.lineage_rows(split): str(count) for split, count in self.rows.items()},
            tags.LINEAGE_TRAINING_DATA_SHA256: self.fingerprint,
            tags.LINEAGE_PACKAGE_VERSION: self.package_version,
            tags.LINEAGE_GIT_COMMIT: self.git_commit,
        }


@dataclass(frozen=True)
class TrainingResult:
    """The chosen, fitted pipeline and everything a run logs about it."""

    model: Pipeline
    candidate: str
    params: dict[str, Any]
    target: str
    search: dict[str, float]  # candidate name -> validation ROC-AUC
    fit_seconds: dict[str, float]  # candidate name -> seconds its fit took
    fit_cpu_seconds: dict[str, float]  # candidate name -> CPU seconds of its fit (what a loaded machine stretches less)
    evaluation: Evaluation
    lineage: Lineage
    input_example: pd.DataFrame  # raw encounter columns, as the model takes them
    seconds: float
    reference_profile: dict[str, Any] | None = None  # `drift.reference_profile` of the train split, logged with it


def build_pipeline(classifier: BaseEstimator) -> Pipeline:
    """Raw encounter columns -> `EncounterFeatures` -> `classifier`."""
    return Pipeline([("features", EncounterFeatures()), ("classifier", classifier)])


def default_candidates(seed: int) -> list[Candidate]:
    """The reference GradientBoosting (fitted on sparse features) and the HistGradientBoosting search
    (see HIST_SEARCH), slowest first."""
    reference = Candidate(
        "gradient_boosting", GradientBoostingClassifier(**REFERENCE_PARAMS, random_state=seed), sparse=True
    )
    search = [
        Candidate(
            f"hist_gradient_boosting_{i + 1}",
            HistGradientBoostingClassifier(**HIST_EARLY_STOPPING, **params, random_state=seed),
        )
        for i, params in enumerate(HIST_SEARCH)
    ]
    return [reference, *search]


def labelled_splits(frame: pd.DataFrame, kind: str) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """(raw rows, labels) of each split of a labelled-encounters frame; ValueError naming what is missing."""
    missing = [c for c in (*encounter_columns.COLUMNS, "split") if c not in frame.columns]
    if missing:
        raise ValueError(f"the training frame lacks columns {missing}")
    splits = {}
    for split in SPLITS:
        rows = frame[frame["split"] == split].reset_index(drop=True)
        labels = target(rows[encounter_columns.TARGET_COLUMN], kind).to_numpy()
        if len(np.unique(labels)) < 2:
            raise ValueError(
                f"the {split} split needs both classes of the {kind!r} target to train and evaluate, "
                f"it has {len(rows)} rows with labels {sorted(set(labels.tolist()))}"
            )
        splits[split] = (rows, labels)
    return splits


def _fit(candidate: Candidate, features: pd.DataFrame, labels: np.ndarray) -> tuple[BaseEstimator, float, float]:
    # OpenMP's thread count is per calling thread: set it in the worker thread itself.
    with threadpool_limits(limits=1, user_api="openmp"):
        started, cpu = time.perf_counter(), time.thread_time()
        if candidate.sparse:  # a DataFrame of sparse columns: scikit-learn keeps the feature names
            features = features.astype(pd.SparseDtype(float, 0.0))
        fitted = clone(candidate.classifier).fit(features, labels)
        return fitted, time.perf_counter() - started, time.thread_time() - cpu


def fit_candidates(
    candidates: Sequence[Candidate], train: tuple[pd.DataFrame, np.ndarray], side_jobs: Sequence[Callable[[], Any]] = ()
) -> tuple[list[tuple[BaseEstimator, float, float]], list]:
    """Each candidate's classifier fitted on the train split's features, one per core at a time, with the
    wall and CPU seconds its fit took; then the results of `side_jobs`, run on whichever core frees first
    (work that waits for no fit, done while the last fits finish)."""
    features = EncounterFeatures().fit(train[0]).transform(train[0])
    jobs = [delayed(_fit)(c, features, train[1]) for c in candidates] + [delayed(job)() for job in side_jobs]
    results = Parallel(n_jobs=min(len(jobs), os.cpu_count() or 1), prefer="threads")(jobs)
    return results[: len(candidates)], results[len(candidates) :]


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of rows' 50 source columns, as text, in encounter order: the same rows give the same digest."""
    text = frame[list(encounter_columns.COLUMNS)].astype(object)  # hashed as they are: no conversion to pandas strings
    ordered = text.iloc[np.argsort(pd.to_numeric(text["encounter_id"], errors="coerce").to_numpy(), kind="stable")]
    return hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes()).hexdigest()


def git_commit() -> str:
    """The commit of the checkout the package runs from, or "unknown" (an installed wheel, no git)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def lineage(frame: pd.DataFrame, splits: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> Lineage:
    """The lineage of a model trained on `splits` of `frame`."""
    batches = tuple(sorted({int(b) for b in frame["batch_number"]})) if "batch_number" in frame else ()
    return Lineage(
        batches=batches,
        rows={name: len(rows) for name, (rows, _) in splits.items()},
        fingerprint=fingerprint(splits["train"][0]),
        package_version=package_version(),
        git_commit=git_commit(),
    )


def train_model(
    frame: pd.DataFrame, settings: Settings, candidates: Sequence[Candidate] | None = None, figures: bool = True
) -> TrainingResult:
    """Fit every candidate on the train split, keep the best on validation, evaluate it on validation and test.

    `frame` is `Storage.labelled_encounters()`: the 50 source columns, `split` and (optionally)
    `batch_number`. The target is `settings.target`.
    """
    with threadpool_limits(limits=1, user_api="openmp"):  # see the module docstring
        return _train(frame, settings, candidates, figures)


def _train(
    frame: pd.DataFrame, settings: Settings, candidates: Sequence[Candidate] | None, figures: bool
) -> TrainingResult:
    started = time.perf_counter()
    candidates = list(candidates or default_candidates(settings.random_seed))
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    splits = labelled_splits(frame, settings.target)
    fits, (trained_on, profile) = fit_candidates(
        candidates,
        splits["train"],
        side_jobs=(partial(lineage, frame, splits), partial(drift.reference_profile, splits["train"][0])),
    )
    fitted, seconds, cpu_seconds = zip(*fits, strict=False)
    validation_rows, validation_labels = splits["validation"]
    validation_features = EncounterFeatures().fit(validation_rows).transform(validation_rows)
    search = {
        c.name: float(roc_auc_score(validation_labels, positive_probability(classifier, validation_features)))
        for c, classifier in zip(candidates, fitted, strict=True)
    }
    best = max(range(len(candidates)), key=lambda i: search[candidates[i].name])
    name, classifier, params = candidates[best].name, fitted[best], _params(fitted[best])
    sigmoid = calibrated(classifier, validation_features, validation_labels)
    search[f"{name}{CALIBRATED_SUFFIX}"] = float(
        roc_auc_score(validation_labels, positive_probability(sigmoid, validation_features))
    )
    if search[f"{name}{CALIBRATED_SUFFIX}"] >= search[name]:  # the calibrated candidate when it ranks as well
        name, classifier, params = f"{name}{CALIBRATED_SUFFIX}", sigmoid, params | {"calibration": CALIBRATION}
    model = build_pipeline(classifier)
    model.named_steps["features"].fit(splits["train"][0])  # the classifier was fitted on exactly these features
    return TrainingResult(
        model=model,
        candidate=name,
        params=params,
        target=settings.target,
        search=search,
        fit_seconds={c.name: round(t, 3) for c, t in zip(candidates, seconds, strict=True)},
        fit_cpu_seconds={c.name: round(t, 3) for c, t in zip(candidates, cpu_seconds, strict=True)},
        evaluation=evaluate(
            model, {k: splits[k] for k in ("validation", "test")}, figures=figures, seed=settings.random_seed
        ),
        lineage=trained_on,
        input_example=splits["train"][0].loc[: INPUT_EXAMPLE_ROWS - 1, list(encounter_columns.FEATURE_INPUT_COLUMNS)],
        seconds=time.perf_counter() - started,
        reference_profile=profile,
    )


def calibrated(classifier: BaseEstimator, features: pd.DataFrame, labels: np.ndarray) -> CalibratedClassifierCV:
    """`classifier`, left as it is, with Platt's sigmoid fitted on (`features`, `labels`): the validation split.

    The sigmoid maps the ensemble's log-odds through a straight line, so the ranking (ROC-AUC) is the
    same or reversed, and the explanations stay exact (see readmission.explain).
    """
    return CalibratedClassifierCV(FrozenEstimator(classifier), method=CALIBRATION).fit(features, labels)


def _params(classifier: BaseEstimator) -> dict[str, Any]:
    """The classifier's class, its parameters and, when it stopped early, the iterations it kept."""
    params = {"classifier": type(classifier).__name__, **classifier.get_params()}
    if hasattr(classifier, "n_iter_"):
        params["n_iter_"] = int(classifier.n_iter_)
    return params
