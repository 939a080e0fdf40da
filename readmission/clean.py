"""The rows of `diabetes_clean`: the model's own features, the targets, the ids and the split.

The features come from `EncounterFeatures`, the transformer every logged model starts with,
so the clean table and the models cannot disagree about what a feature means.
"""

from __future__ import annotations

from functools import cache

import pandas as pd

from readmission import encounter_columns
from readmission.features import EncounterFeatures, target
from readmission.split import assign_split
from readmission.validation import whole_numbers

TARGET_COLUMNS = ("readmitted_any", "readmitted_30")  # 1 when readmitted at all / within 30 days
KEY_COLUMNS = ("encounter_id", "patient_nbr", "split")


@cache
def feature_columns() -> tuple[str, ...]:
    """The engineered feature columns, in the transformer's order (fixed: its vocabularies are constants)."""
    return tuple(str(name) for name in EncounterFeatures().get_feature_names_out())


def clean_columns() -> list[str]:
    """Every column of a clean batch, in order: features, target text, target flags, ids, split."""
    return [*feature_columns(), encounter_columns.TARGET_COLUMN, *TARGET_COLUMNS, *KEY_COLUMNS]


def clean_batch(valid_raw: pd.DataFrame) -> pd.DataFrame:
    """Features, targets, ids and split of validated raw rows (see `validation.split_valid_rows`)."""
    features = EncounterFeatures().fit(valid_raw).transform(valid_raw).reset_index(drop=True)
    readmitted = valid_raw[encounter_columns.TARGET_COLUMN].astype(object).reset_index(drop=True)
    ids = {column: whole_numbers(valid_raw[column]).to_numpy(dtype="int64") for column in encounter_columns.ID_COLUMNS}
    return features.assign(
        readmitted=readmitted,
        readmitted_any=target(readmitted, "any").to_numpy(),
        readmitted_30=target(readmitted, "30day").to_numpy(),
        **ids,
        split=assign_split(valid_raw["patient_nbr"]).to_numpy(),
    )[clean_columns()]
