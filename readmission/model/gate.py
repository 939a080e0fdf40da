"""The promotion gate: does a new version take `@production`, or wait as `@challenger`?

The gate scores the challenger and the current champion on the same current test split and
writes its decision and both scores as tags of the challenger's version (`tags.GATE_*`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from readmission import encounter_columns, evaluate
from readmission.config import Settings
from readmission.evaluate import positive_probability
from readmission.features import target
from readmission.model import tags
from readmission.model.production import production_version, registry_client
from readmission.model.registry import load_pipeline, move_production, now, score_text

log = logging.getLogger(__name__)

PROMOTED, KEPT, REFUSED = "promoted", "kept_as_challenger", "refused"


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided for a challenger version, and why."""

    version: str
    decision: str  # PROMOTED, KEPT or REFUSED
    alias: str  # the alias the challenger holds now ("" for none)
    challenger_auc: float | None
    champion_version: str | None
    champion_auc: float | None
    reason: str

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def tags(self) -> dict[str, str]:
        """The decision as version tags."""
        return {
            tags.GATE_DECISION: self.decision,
            tags.GATE_REASON: self.reason,
            tags.GATE_CHALLENGER_ROC_AUC: score_text(self.challenger_auc),
            tags.GATE_CHAMPION_ROC_AUC: score_text(self.champion_auc),
            tags.GATE_CHAMPION_VERSION: self.champion_version or "none",
        }

    def __str__(self) -> str:
        holds = f" (@{self.alias})" if self.alias else ""
        return f"version {self.version}: {self.decision}{holds}: {self.reason}"


@dataclass(frozen=True)
class Scores:
    """A version's ROC-AUC on the gate's test rows, overall and on its worst patient group."""

    roc_auc: float
    worst_group_roc_auc: float | None
    worst_group: str | None


def score_version(settings: Settings, version: str, rows: pd.DataFrame, labels: np.ndarray) -> Scores:
    """ROC-AUC of registered `version` on `rows` (raw columns) against `labels`, overall and per group."""
    model = load_pipeline(settings, f"models:/{settings.model_name}/{version}")
    probability = positive_probability(model, rows)
    summary = evaluate.group_summary(evaluate.group_table(rows, labels, probability, threshold=0.5))
    worst_auc, worst_group = summary.get("roc_auc_worst_group"), summary.get("worst_group")
    return Scores(
        float(roc_auc_score(labels, probability)),
        None if worst_auc is None else float(worst_auc),
        None if worst_group is None else str(worst_group),
    )


def run_gate(settings: Settings, version: str, test_rows: pd.DataFrame) -> GateDecision:
    """Promote `version` to `@production`, or give it `@challenger`, by ROC-AUC on `test_rows` (the current test split).

    It is promoted when its ROC-AUC is at least `promotion_min_auc`, not lower than the
    champion's by more than `promotion_tolerance`, and its worst patient group's ROC-AUC (race,
    gender, age band: `evaluate.group_table`) not lower than the champion's worst group's by
    more than `promotion_group_tolerance` (no champion: the floor alone decides).
    A champion that cannot be loaded or scored is not compared blindly: the challenger is
    kept and the reason is written down. The decision and both scores become version tags.
    """
    client = registry_client(settings)
    version = str(version)
    labels = target(test_rows[encounter_columns.TARGET_COLUMN], settings.target).to_numpy()
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the test split ({len(test_rows)} rows) needs both classes to compare models by ROC-AUC")
    floor, tolerance = settings.promotion_min_auc, settings.promotion_tolerance
    champion = production_version(settings, client)
    champion_version = str(champion.version) if champion else None
    challenger_auc = champion_auc = None
    challenger_scores = champion_scores = None
    try:
        challenger_scores = score_version(settings, version, test_rows, labels)
        challenger_auc = challenger_scores.roc_auc
    except Exception as exc:  # noqa: BLE001 - whatever breaks loading, the gate must answer, not crash
        decision, reason = REFUSED, f"the challenger could not be loaded or scored: {type(exc).__name__}: {exc}"
    else:
        if champion_version == version:
            decision, reason = PROMOTED, f"version {version} already holds @{settings.model_alias}"
        elif champion_version is None:
            decision = PROMOTED if challenger_auc >= floor else KEPT
            clears = "clears" if decision == PROMOTED else "is below"
            reason = f"no champion yet; ROC-AUC {challenger_auc:.4f} {clears} the floor {floor}"
        else:
            try:
                champion_scores = score_version(settings, champion_version, test_rows, labels)
                champion_auc = champion_scores.roc_auc
            except Exception as exc:  # noqa: BLE001 - a missing or corrupt artifact must not crash the gate
                decision = REFUSED
                reason = (
                    f"champion version {champion_version} could not be loaded or scored, so the challenger is "
                    f"not promoted blindly: {type(exc).__name__}: {exc}"
                )
            else:
                decision, reason = compare(challenger_auc, champion_auc, champion_version, floor, tolerance)
                if decision == PROMOTED and (worse := _worse_group(challenger_scores, champion_scores, settings)):
                    decision, reason = KEPT, worse
    alias = ""  # a challenger that cannot even be loaded gets no alias
    if decision == PROMOTED:
        if champion_version != version:
            move_production(client, settings, version, "gate")
        alias = settings.model_alias
    elif challenger_auc is not None:
        client.set_registered_model_alias(settings.model_name, settings.challenger_alias, version)
        alias = settings.challenger_alias
    result = GateDecision(version, decision, alias, challenger_auc, champion_version, champion_auc, reason[:4000])
    scored = challenger_scores or Scores(0.0, None, None)
    champion_worst = champion_scores.worst_group_roc_auc if champion_scores else None
    decision_tags = {
        **result.tags(),
        tags.GATE_TEST_ROWS: str(len(test_rows)),
        tags.GATE_MIN_AUC: str(floor),
        tags.GATE_TOLERANCE: str(tolerance),
        tags.GATE_DECIDED_AT: now(),
        tags.GATE_CHALLENGER_WORST_GROUP: scored.worst_group or "none",
        tags.GATE_CHALLENGER_WORST_GROUP_ROC_AUC: score_text(scored.worst_group_roc_auc),
        tags.GATE_CHAMPION_WORST_GROUP_ROC_AUC: score_text(champion_worst),
        tags.GATE_GROUP_TOLERANCE: score_text(settings.promotion_group_tolerance),
    }
    for key, value in decision_tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    log.info("%s", result)
    return result


def _worse_group(challenger: Scores, champion: Scores, settings: Settings) -> str | None:
    """Why the challenger's worst group is too far below the champion's worst (PROMOTION_GROUP_TOLERANCE), or None."""
    tolerance = settings.promotion_group_tolerance
    if challenger.worst_group_roc_auc is None or champion.worst_group_roc_auc is None:
        return None
    if challenger.worst_group_roc_auc >= champion.worst_group_roc_auc - tolerance:
        return None
    return (
        f"worst-group ROC-AUC {challenger.worst_group_roc_auc:.4f} ({challenger.worst_group}) vs the champion's "
        f"{champion.worst_group_roc_auc:.4f} ({champion.worst_group}): lower by more than the group tolerance "
        f"{tolerance} (PROMOTION_GROUP_TOLERANCE)"
    )


def compare(
    challenger: float, champion: float, champion_version: str, floor: float, tolerance: float
) -> tuple[str, str]:
    """The gate's decision on overall ROC-AUC alone: the floor first, then the tolerance below the champion."""
    scores = f"ROC-AUC {challenger:.4f} vs champion version {champion_version} {champion:.4f}"
    if challenger < floor:
        return KEPT, f"{scores}: below the floor {floor}"
    if challenger < champion - tolerance:
        return KEPT, f"{scores}: lower by more than the tolerance {tolerance}"
    return PROMOTED, f"{scores}: within the tolerance {tolerance} or better, and above the floor {floor}"


def train_and_register(settings: Settings, candidates: list | None = None) -> GateDecision:
    """Train on the stored clean data, log and register the model, and run the gate on the current test split
    (`readmission train`)."""
    from readmission.model.registry import log_training
    from readmission.storage import Storage
    from readmission.train import train_model

    storage = Storage.from_settings(settings)
    try:
        storage.create_schema()  # harmless when it exists; a fresh store then says "no data", not "no table"
        frame = storage.labelled_encounters()
    finally:
        storage.dispose()
    if frame.empty:
        raise ValueError("no clean data stored yet: run `readmission ingest` first")
    result = train_model(frame, settings, candidates)
    version = log_training(result, settings)
    return run_gate(settings, version.version, frame[frame["split"] == "test"])
