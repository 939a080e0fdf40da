"""Validation before storage: refuse a malformed batch, quarantine the rows that cannot be trusted.

Two levels, both vectorized (one pass per check over a whole column, no loop over rows):

* the batch as a whole: `validate_columns` raises `SchemaError` when the columns are not
  exactly the 50 source columns. Extra columns are refused too: a source that sends more
  than the file has changed its format, and storing the batch would silently drop data.
* each row: `split_valid_rows` separates the rows that can be stored and cleaned from those
  that go to the quarantine table, each with a reason naming the column and the value.
"""

from __future__ import annotations

import pandas as pd

from readmission import schema

ID_PATTERN = r"[0-9]{1,18}"  # a whole number that fits a BIGINT, written in digits
# Ids into the data set's code tables (schema.ADMISSION_TYPES, ...); any whole number that fits an INTEGER is
# accepted (an unknown code is a level of its own for the features), anything else quarantines the row.
CODE_COLUMNS = ("admission_type_id", "discharge_disposition_id", "admission_source_id")
MAX_CODE = 2**31 - 1
REASON_SEPARATOR = "; "


class SchemaError(ValueError):
    """A batch's columns are wrong as a whole: it is refused and nothing of it is written."""


def validate_columns(frame: pd.DataFrame) -> None:
    """Raise SchemaError unless `frame` has exactly the data set's 50 source columns (any order)."""
    columns = [str(c) for c in frame.columns]
    missing = [c for c in schema.COLUMNS if c not in columns]
    unexpected = [c for c in columns if c not in schema.COLUMNS]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    problems = [
        f"missing columns {missing}" if missing else "",
        f"unexpected columns {unexpected}" if unexpected else "",
        f"repeated columns {repeated}" if repeated else "",
    ]
    if any(problems):
        raise SchemaError(f"batch refused, its columns are not the data set's: {', '.join(p for p in problems if p)}")


def as_text(values: pd.Series) -> pd.Series:
    """Values as strings (a number becomes its text), missing values as <NA>."""
    return values.astype("string")


def shown(values: pd.Series) -> pd.Series:
    """Values as a reason quotes them: `'abc'`, or `nothing` for a missing value."""
    return ("'" + as_text(values) + "'").fillna("nothing")


def encounter_ids(frame: pd.DataFrame) -> pd.Series:
    """Each row's encounter_id as an integer, <NA> where it is missing or not a whole number."""
    return whole_numbers(frame["encounter_id"])


def whole_numbers(values: pd.Series) -> pd.Series:
    """Values written as whole numbers in digits (e.g. '42', or 42), as Int64; <NA> for anything else."""
    text = as_text(values)
    valid = text.str.fullmatch(ID_PATTERN).fillna(False).astype(bool)
    return text.where(valid).astype("Int64")


class _Reasons:
    """Reasons accumulated per row: a rule adds its message to the rows it rejects."""

    def __init__(self, index: pd.Index):
        self.text = pd.Series("", index=index, dtype="string")

    def add(self, rejected: pd.Series, message: str, values: pd.Series | None = None) -> None:
        """Add `message` (followed by the row's value, when `values` is given) to the `rejected` rows."""
        rejected = rejected.fillna(True).astype(bool)
        if not rejected.any():
            return
        if values is not None:
            message = message + shown(values[rejected])
        current = self.text[rejected]
        self.text[rejected] = current.where(current == "", current + REASON_SEPARATOR) + message


def key_problems(frame: pd.DataFrame) -> pd.Series:
    """Why a row cannot be keyed by its encounter_id ("" when it can).

    A missing or non-numeric id, or an id already used by an earlier row of the same batch
    (the first occurrence is kept).
    """
    reasons = _Reasons(frame.index)
    _add_key_problems(reasons, frame)
    return reasons.text


def _add_key_problems(reasons: _Reasons, frame: pd.DataFrame) -> None:
    ids = encounter_ids(frame)
    reasons.add(ids.isna(), "encounter_id must be a whole number, got ", frame["encounter_id"])
    repeated = ids.notna() & ids.duplicated(keep="first")
    reasons.add(repeated, "the same encounter_id appears earlier in the batch: ", frame["encounter_id"])


def row_problems(frame: pd.DataFrame) -> pd.Series:
    """Every reason to quarantine each row ("" when the row is valid), joined with '; '."""
    reasons = _Reasons(frame.index)
    _add_key_problems(reasons, frame)
    reasons.add(
        whole_numbers(frame["patient_nbr"]).isna(), "patient_nbr must be a whole number, got ", frame["patient_nbr"]
    )
    for column in CODE_COLUMNS:
        code = whole_numbers(frame[column]).between(0, MAX_CODE)
        reasons.add(~code, f"{column} must be a whole number code, got ", frame[column])
    for column, (low, high) in schema.COUNT_RANGES.items():
        plausible = whole_numbers(frame[column]).between(low, high)
        reasons.add(~plausible, f"{column} must be a whole number from {low} to {high}, got ", frame[column])
    allowed = ", ".join(f"'{v}'" for v in schema.TARGET_VALUES)
    target = frame[schema.TARGET_COLUMN]
    reasons.add(
        ~as_text(target).isin(schema.TARGET_VALUES), f"{schema.TARGET_COLUMN} must be one of {allowed}, got ", target
    )
    return reasons.text


def split_valid_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows, quarantined rows with a `reason` column); both keep `frame`'s index and columns."""
    validate_columns(frame)
    reasons = row_problems(frame)
    rejected = (reasons != "").to_numpy(dtype=bool)
    quarantined = frame[rejected].assign(reason=reasons[rejected].astype(object))
    return frame[~rejected], quarantined
