"""The model's record over time, from the platform's own stores: what the UI's Monitoring page shows.

For each batch: the version in service that scored it before any training on it (the DAG's
`score_batch` stores its predictions with the labels), that version's live ROC-AUC, and the
drift of the batch (PSI of its features against the training profile logged with that
version). And every promotion the registry recorded. Prometheus and Grafana show the same
figures as time series; this needs neither.
"""

from __future__ import annotations

import logging

import pandas as pd

from readmission import drift
from readmission.config import Settings

log = logging.getLogger(__name__)

TOP_DRIFTING = 3  # features listed per batch, by PSI


def batch_record(settings: Settings) -> pd.DataFrame:
    """One row per batch, oldest first, from the platform's own stores (no Prometheus): when it came, its
    rows, the version in service that scored it before any training on it, that version's live ROC-AUC
    on it (below PROMOTION_MIN_AUC: `below_floor`), and the PSI of its most drifting features against
    that version's training profile."""
    from sklearn.metrics import roc_auc_score

    from readmission.storage import Storage

    storage = Storage.from_settings(settings)
    try:
        batches, predictions = storage.batch_log(), storage.predictions()
        profiles: dict[str, dict | None] = {}
        rows = []
        for batch in batches.itertuples():
            scored = predictions[predictions["batch_number"] == batch.batch_number]
            version = str(scored["model_version"].iloc[0]) if len(scored) else None
            labels = scored["label"].dropna().astype(int)
            live = (float(roc_auc_score(labels, scored.loc[labels.index, "probability"].astype(float)))
                    if labels.nunique() == 2 else None)  # fmt: skip
            psi = {}
            if version is not None:
                if version not in profiles:
                    profiles[version] = _profile(settings, version)
                if (profile := profiles[version]) is not None:
                    psi = drift.batch_psi(profile, storage.read_raw_batch(int(batch.batch_number)))
            top = sorted(psi.items(), key=lambda item: -item[1])[:TOP_DRIFTING]
            rows.append({"batch": int(batch.batch_number), "received_at": batch.started_at,
                         "rows_stored": int(batch.rows_stored), "rows_rejected": int(batch.rows_rejected),
                         "model_version": version, "rows_scored": len(scored), "live_roc_auc": live,
                         "below_floor": live is not None and live < settings.promotion_min_auc,
                         "max_psi": max(psi.values()) if psi else None,
                         "top_drifting": ", ".join(f"{feature} {value:.3f}" for feature, value in top)})  # fmt: skip
    finally:
        storage.dispose()
    columns = ["batch", "received_at", "rows_stored", "rows_rejected", "model_version", "rows_scored", "live_roc_auc",
               "below_floor", "max_psi", "top_drifting"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def promotions(settings: Settings) -> pd.DataFrame:
    """Every move of `@production` the registry recorded: version, when, how (gate or manual), the version it
    replaced and the gate's reason, oldest first."""
    from mlflow import MlflowClient  # the UI has mlflow-skinny: the registry's client, not readmission.registry

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    rows = []
    for version in client.search_model_versions(f"name = '{settings.model_name}'"):
        tags = version.tags or {}
        if "promoted_at" in tags:
            rows.append({"version": str(version.version), "promoted_at": pd.Timestamp(tags["promoted_at"]),
                         "promoted_by": tags.get("promoted_by", ""), "replaced": tags.get("previous_champion", ""),
                         "reason": tags.get("gate.reason", "")})  # fmt: skip
    frame = pd.DataFrame(rows, columns=["version", "promoted_at", "promoted_by", "replaced", "reason"])
    return frame.sort_values("promoted_at", ignore_index=True)


def _profile(settings: Settings, version: str) -> dict | None:
    """The training profile logged with `version`, or None (none logged, or MLflow unreachable: no drift shown)."""
    try:
        return drift.profile_of_model(f"models:/{settings.model_name}/{version}", settings.mlflow_tracking_uri)
    except Exception as exc:  # noqa: BLE001 - the rest of the record is still worth showing
        log.warning("the training profile of version %s could not be read: %s: %s", version, type(exc).__name__, exc)
        return None
