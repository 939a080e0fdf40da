"""The rows of `diabetes_clean`: each validated encounter's 50 source columns, typed, and its split.

Typed as a data analyst queries them and as the models take them (the inference API's request
and the MLflow model's `EncounterRow` take the same form):

* `INTEGER_COLUMNS` (the two ids, the three code-table ids and the eight counts) as integers;
* every other column as text, with the data set's missing marker `?` (or a missing cell) as
  NULL. `None` in max_glu_serum and A1Cresult stays text: it says the test was not taken.

The features are not stored: every model starts with `features.EncounterFeatures`, which
computes them from these columns (the same features as from the raw text, see the tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from readmission import schema
from readmission.split import assign_split
from readmission.validation import CODE_COLUMNS, whole_numbers

INTEGER_COLUMNS = (*schema.ID_COLUMNS, *CODE_COLUMNS, *schema.COUNT_RANGES)
TEXT_COLUMNS = tuple(c for c in schema.COLUMNS if c not in INTEGER_COLUMNS)
CLEAN_COLUMNS = (*schema.COLUMNS, "split")  # what `clean_rows` gives; the store adds the batch keys


def typed_encounters(valid_raw: pd.DataFrame) -> pd.DataFrame:
    """The 50 source columns of validated raw rows, typed (see the module docstring); the index is kept.

    Raises ValueError naming the column when an integer column holds anything but whole numbers
    (validation quarantines those rows first).
    """
    integers = {}
    for column in INTEGER_COLUMNS:
        numbers = whole_numbers(valid_raw[column])
        if numbers.isna().any():
            raise ValueError(
                f"{column} must be whole numbers, got {valid_raw[column][numbers.isna()].head(5).tolist()}"
            )
        integers[column] = numbers.to_numpy(dtype=np.int64)
    text = valid_raw[list(TEXT_COLUMNS)].to_numpy(dtype=object, copy=True)  # every text column at once
    text[pd.isna(text)] = None  # first: comparing pandas' NA with text raises
    text[text == schema.MISSING] = None
    typed = pd.DataFrame(text, index=valid_raw.index, columns=list(TEXT_COLUMNS), dtype=object)
    return typed.assign(**integers)[list(schema.COLUMNS)]


def clean_rows(valid_raw: pd.DataFrame) -> pd.DataFrame:
    """The clean rows of validated raw rows (see `validation.split_valid_rows`): typed columns and split."""
    typed = typed_encounters(valid_raw).reset_index(drop=True)
    return typed.assign(split=assign_split(typed["patient_nbr"]))[list(CLEAN_COLUMNS)]
