"""The MLflow tags the platform writes, by name: every module reads and writes them through these.

Run and version tags are strings. The lineage tags come from `readmission.train.Lineage.tags`;
the gate's from `readmission.model.gate`; the alias history from `readmission.model.registry`.
"""

from __future__ import annotations

# --- what a training run and its version are (written by `registry.log_training`) ---------------------
TARGET = "target"
CANDIDATE = "candidate"
THRESHOLD_RULE = "threshold_rule"
RUN_ID = "run_id"
TEST_ROC_AUC = "test_roc_auc"
PIPELINE_BATCH = "pipeline.batch"  # the batch whose DAG run registered the version

# --- lineage: what the model was trained on (`readmission.train.Lineage`) ------------------------------
LINEAGE_PREFIX = "lineage."
LINEAGE_BATCHES = "lineage.batches"  # "1,2,3,5"
LINEAGE_TRAINING_DATA_SHA256 = "lineage.training_data_sha256"
LINEAGE_PACKAGE_VERSION = "lineage.package_version"
LINEAGE_GIT_COMMIT = "lineage.git_commit"


def lineage_rows(split: str) -> str:
    """The tag holding how many rows of `split` the model was trained and evaluated on."""
    return f"{LINEAGE_PREFIX}{split}_rows"


# --- moves of `@production` ----------------------------------------------------------------------------
PREVIOUS_CHAMPION = "previous_champion"  # the version this one replaced: what `rollback` goes back to
PROMOTED_AT = "promoted_at"
PROMOTED_BY = "promoted_by"  # "gate" or "manual"
ROLLED_BACK_AT = "rolled_back_at"

# --- the promotion gate's decision (`readmission.model.gate`) -------------------------------------------
GATE_DECISION = "gate.decision"
GATE_REASON = "gate.reason"
GATE_CHALLENGER_ROC_AUC = "gate.challenger_roc_auc"
GATE_CHAMPION_ROC_AUC = "gate.champion_roc_auc"
GATE_CHAMPION_VERSION = "gate.champion_version"
GATE_CHALLENGER_WORST_GROUP = "gate.challenger_worst_group"
GATE_CHALLENGER_WORST_GROUP_ROC_AUC = "gate.challenger_worst_group_roc_auc"
GATE_CHAMPION_WORST_GROUP_ROC_AUC = "gate.champion_worst_group_roc_auc"
GATE_GROUP_TOLERANCE = "gate.group_tolerance"
GATE_TEST_ROWS = "gate.test_rows"
GATE_MIN_AUC = "gate.min_auc"
GATE_TOLERANCE = "gate.tolerance"
GATE_DECIDED_AT = "gate.decided_at"
