"""The model's report card: the API's account of the model in service, plus its MLflow training run.

The API answers `/model` (version, metrics, lineage tags); the training date and the
evaluation images (ROC curve, confusion matrix) come from the run in MLflow, downloaded
through the MLflow client when MLflow can be reached.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import requests

from readmission.model import tags as model_tags
from readmission.serving.api_models import GroupMetrics

# (label, metric key without its split prefix): what a clinician's report card shows.
HEADLINE_METRICS = (("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"), ("Accuracy", "accuracy"), ("F1", "f1"))
# (title, file name) of the evaluation images `readmission.evaluate.draw_figures` logs with the run.
IMAGES = (
    ("ROC curve", "roc_curve.png"),
    ("Confusion matrix", "confusion_matrix.png"),
    ("Reliability diagram", "reliability_diagram.png"),
)
CALIBRATION_IMAGES = ("Reliability diagram",)  # shown beside what the probabilities mean, not with the curves
GROUP_COLUMNS = {
    "attribute": "Attribute",
    "group": "Group",
    "encounters": "Encounters",
    "status": "Status",
    "roc_auc": "ROC-AUC",
    "ece": "Calibration error",
    "positive_rate": "Predicted positive",
    "recall": "Recall",
    "readmitted_rate": "Readmitted",
}


class MlflowUnavailable(RuntimeError):
    """MLflow cannot be reached or has no such run; the message says which."""


@dataclass(frozen=True)
class RunDetails:
    """What the training run adds to the card."""

    experiment_id: str
    trained_at: datetime | None
    images: dict[str, bytes]  # title -> image file content, in `IMAGES` order

    def mlflow_link(self, mlflow_ui_url: str, run_id: str) -> str:
        """The run's page in the MLflow UI at `mlflow_ui_url`."""
        return f"{mlflow_ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"


def headline_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """ROC-AUC, PR-AUC, accuracy and F1, measured on the test set when the run logged it so."""
    return {label: metrics.get(f"test_{key}", metrics.get(key)) for label, key in HEADLINE_METRICS}


def _check_reachable(tracking_uri: str, timeout: float) -> None:
    """Fail fast on an MLflow server that does not answer (its client would retry for minutes)."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException:
        raise MlflowUnavailable(f"MLflow at {tracking_uri} cannot be reached.") from None


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of the run, walking its folders."""
    files = []
    for info in client.list_artifacts(run_id, path):
        files.extend(_artifact_paths(client, run_id, info.path) if info.is_dir else [info.path])
    return files


def _pick_images(paths: list[str]) -> dict[str, str]:
    """The artifact path of each evaluation image, by title, wherever the run filed it; missing ones left out."""
    by_name = {Path(p).name: p for p in sorted(paths, key=len, reverse=True)}  # the shallowest path wins
    return {title: by_name[name] for title, name in IMAGES if name in by_name}


def run_details(tracking_uri: str, run_id: str, timeout: float = 5.0) -> RunDetails:
    """The run's start time and evaluation images, downloaded from MLflow."""
    _check_reachable(tracking_uri, timeout)
    from mlflow.exceptions import MlflowException  # imported here: MLflow is slow to import
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        images = {}
        with tempfile.TemporaryDirectory() as folder:
            for title, path in _pick_images(_artifact_paths(client, run_id)).items():
                images[title] = Path(client.download_artifacts(run_id, path, folder)).read_bytes()
    except (MlflowException, OSError) as exc:
        raise MlflowUnavailable(f"MLflow at {tracking_uri} could not give run {run_id}: {exc}") from None
    started = run.info.start_time
    trained_at = datetime.fromtimestamp(started / 1000, tz=UTC) if started else None
    return RunDetails(run.info.experiment_id, trained_at, images)


def trained_batches(tags: dict[str, str]) -> str | None:
    """The batches the model was trained on (the `lineage.batches` tag, "1,2,3,5"), as runs: "1–3, 5"."""
    numbers = sorted({int(b) for b in tags.get(model_tags.LINEAGE_BATCHES, "").split(",") if b.strip().isdigit()})
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or None


def group_frame(groups: list[GroupMetrics]) -> pd.DataFrame:
    """The model card's per-group metrics as a table with readable headings, groups too small left blank."""
    frame = pd.DataFrame([group.model_dump() for group in groups], columns=list(GROUP_COLUMNS))
    return frame[list(GROUP_COLUMNS)].rename(columns=GROUP_COLUMNS).round(3)
