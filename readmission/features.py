"""Feature engineering as one scikit-learn transformer.

`EncounterFeatures` turns encounter columns (the data set's own vocabulary, typed as the
`diabetes_clean` table holds them, or as text as the data API serves them: both give the same
features) into a fixed set of numeric features. It is the first step of every logged model,
so training, batch scoring and serving cannot drift apart. Its vocabularies are fixed
constants, not learned, so every batch yields the same columns, and anything unseen maps to a
defined "other" level instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from readmission import encounter_columns
from readmission.encodings import (
    A1C,
    CATEGORICAL,
    CHANGE,
    DIABETES_MEDICATION,
    DIAGNOSIS_GROUP,
    GLUCOSE,
    ID_COLUMNS,
    LOOKUP_POSITION,
    LOOKUPS,
    MEDICATION_RANK,
    Encoding,
    icd9_groups,
    id_codes,
    numbers_of,
)

COUNT_COLUMNS = tuple(encounter_columns.COUNT_RANGES)

INPUT_COLUMNS = pd.Index(encounter_columns.FEATURE_INPUT_COLUMNS)
COLUMN_BY_COLUMN_ROWS = 1_024  # below this, pandas' per-column overhead costs more than converting to objects
VISIT_COLUMNS = ("number_outpatient", "number_emergency", "number_inpatient")

Block = tuple[list[str], np.ndarray]  # feature names and their values (one row per input value or row)


@dataclass(frozen=True)
class CodedEncounters:
    """Raw input whose cells are already positions in a list of distinct values, as the CSV reader yields them.

    `codes[i]` holds, row by row, where in `values` the cell of `FEATURE_INPUT_COLUMNS[i]` is:
    no Python object per cell, so the transform skips its hash pass over the cells.
    """

    codes: np.ndarray  # FEATURE_INPUT_COLUMNS x rows
    values: np.ndarray  # objects, none missing (a reader puts the column's default in a missing cell's place)

    def __len__(self) -> int:
        return self.codes.shape[1]


def input_matrix(X: pd.DataFrame | np.ndarray | CodedEncounters) -> np.ndarray:  # noqa: N803 (sklearn's naming)
    """The input columns as one object matrix (absent columns are all missing).

    A DataFrame is matched by column name; an array must hold `encounter_columns.FEATURE_INPUT_COLUMNS` in order.
    """
    if isinstance(X, CodedEncounters):
        return X.values[X.codes.T]
    if isinstance(X, pd.DataFrame):
        return (X if X.columns.equals(INPUT_COLUMNS) else X.reindex(columns=INPUT_COLUMNS)).to_numpy(dtype=object)
    table = np.asarray(X, dtype=object)
    if table.ndim != 2 or table.shape[1] != len(INPUT_COLUMNS):
        raise ValueError(f"expected {len(INPUT_COLUMNS)} columns {list(INPUT_COLUMNS)}, got shape {table.shape}")
    return table


def _missing_as_marker(codes: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """pd.factorize's result with missing cells (code -1) pointing at the missing marker."""
    values = np.append(np.asarray(values, dtype=object), encounter_columns.MISSING)
    return np.where(codes < 0, len(values) - 1, codes), values


def _column_by_column(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """`_cell_codes` of a frame with typed columns: pandas factorizes (Arrow) strings without Python objects."""
    codes, distinct, offset = [], [], 0
    for column in encounter_columns.FEATURE_INPUT_COLUMNS:
        column_codes, values = pd.factorize(frame[column]) if column in frame.columns else (np.full(len(frame), -1), [])
        column_codes, values = _missing_as_marker(column_codes, values)
        codes.append(column_codes + offset)
        distinct.append(values)
        offset += len(values)
    return np.stack(codes), np.concatenate(distinct)


def _cell_codes(X: pd.DataFrame | np.ndarray | CodedEncounters) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
    """Every input cell as an index (`FEATURE_INPUT_COLUMNS` x rows) into an array of distinct values.

    Missing cells (None, NaN, absent columns) point at the missing marker `?`.
    """
    if isinstance(X, CodedEncounters):
        return X.codes, X.values
    if (
        isinstance(X, pd.DataFrame)
        and len(X) >= COLUMN_BY_COLUMN_ROWS
        and not all(pd.api.types.is_object_dtype(t) for t in X.dtypes)
    ):
        return _column_by_column(X)
    table = input_matrix(X)  # Python objects: one hash pass over all cells costs less than a call per column
    codes, distinct = _missing_as_marker(*pd.factorize(table.ravel()))
    return codes.reshape(table.shape).T, distinct


# Number, ICD-9 group row and row in each of `LOOKUPS` of every raw value seen so far: a few thousand
# in the whole data set, so requests mostly find theirs here. Bounded, as clients may send any text.
_FACTS: dict[object, tuple[float, int, tuple[int, ...]]] = {}
FACTS_LIMIT = 100_000


def _facts_of(values: list[object]) -> dict[object, tuple[float, int, tuple[int, ...]]]:
    """The `_FACTS` entry of each value, computed for all of them at once."""
    texts = np.array(values, dtype=object)
    numbers = numbers_of(texts)
    ids = id_codes(numbers)
    by_column = LOOKUPS.items()
    lookups = np.column_stack([lookup.rows(ids if column in ID_COLUMNS else texts) for column, lookup in by_column])
    groups = DIAGNOSIS_GROUP.rows(icd9_groups(texts))
    return dict(
        zip(values, zip(numbers.tolist(), groups.tolist(), map(tuple, lookups.tolist()), strict=True), strict=True)
    )


def _value_facts(distinct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The number, ICD-9 group row and `LOOKUPS` rows (distinct x lookups) of each distinct value.

    Each value is worked out once: encoding the few distinct values, not the cells, is what
    keeps the transform cheap.
    """
    missing = [v for v in distinct if v not in _FACTS]
    fresh = _facts_of(missing) if missing else {}
    if len(_FACTS) < FACTS_LIMIT:
        _FACTS.update(fresh)
    facts = [_FACTS.get(v) or fresh[v] for v in distinct]
    numbers, groups, lookups = zip(*facts, strict=False) if facts else ((), (), ())
    return (
        np.array(numbers, dtype=float),
        np.array(groups, dtype=np.intp),
        np.array(lookups, dtype=np.intp).reshape(len(facts), len(LOOKUPS)),
    )


class EncounterFeatures(TransformerMixin, BaseEstimator):
    """Raw encounter columns -> numeric features with a fixed, documented set of columns."""

    def fit(self, X: pd.DataFrame, y=None) -> EncounterFeatures:  # noqa: N803 (sklearn's naming)
        """Nothing to learn: the vocabularies are the data set's own, fixed in `schema`."""
        self.n_features_out_ = len(self.get_feature_names_out())
        return self

    def transform(self, X: pd.DataFrame | np.ndarray | CodedEncounters) -> pd.DataFrame:  # noqa: N803
        """Engineer the features of every row at once.

        Each distinct input value is encoded once, by table lookups (values repeat heavily:
        a few thousand distinct ones in 100,000 rows), and the results are gathered row by
        row: one hash pass over the cells plus a few array operations, whatever the size.
        """
        codes, distinct = _cell_codes(X)
        at = dict(
            zip(encounter_columns.FEATURE_INPUT_COLUMNS, codes, strict=True)
        )  # column -> index of each cell in `distinct`
        numbers, group_of, lookups = _value_facts(distinct)

        def rows(column: str, encoding: Encoding) -> Block:
            """The features of `column`: its encoding of each distinct value, gathered for each row."""
            return list(encoding.names), encoding.table[lookups[at[column], LOOKUP_POSITION[column]]]

        counts = np.nan_to_num(numbers, nan=0.0)[np.stack([at[c] for c in COUNT_COLUMNS], axis=1)]
        visits = [counts[:, COUNT_COLUMNS.index(c)] for c in VISIT_COLUMNS]
        group_rows = DIAGNOSIS_GROUP.table[group_of]
        ranks = MEDICATION_RANK.table[lookups[:, LOOKUP_POSITION["medications"]], 0]
        medications = ranks[np.stack([at[m] for m in encounter_columns.MEDICATIONS], axis=1)]
        blocks = [
            *(rows(column, encoding) for column, encoding in CATEGORICAL),
            (list(COUNT_COLUMNS), counts),
            (["total_prior_visits"], (visits[0] + visits[1] + visits[2])[:, None]),
            *(
                ([f"{column}_{g}" for g in encounter_columns.DIAGNOSIS_GROUPS], group_rows[at[column]])
                for column in encounter_columns.DIAGNOSIS_COLUMNS
            ),
            rows("max_glu_serum", GLUCOSE),
            rows("A1Cresult", A1C),
            ([f"med_{m.replace('-', '_')}" for m in encounter_columns.MEDICATIONS], medications),
            (
                ["medications_active", "medications_changed"],
                np.column_stack([(medications > 0).sum(axis=1), (medications >= 2).sum(axis=1)]).astype(float),
            ),
            rows("change", CHANGE),
            rows("diabetesMed", DIABETES_MEDICATION),
        ]
        names = tuple(name for block_names, _ in blocks for name in block_names)
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(
            np.hstack([values for _, values in blocks]), columns=_output_columns(names), index=index, copy=False
        )

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The output columns, the same for every input."""
        return self.transform(pd.DataFrame(columns=list(encounter_columns.FEATURE_INPUT_COLUMNS))).columns.to_numpy(
            dtype=object
        )


@lru_cache
def _output_columns(names: tuple[str, ...]) -> pd.Index:
    """The output column index, built once (building it costs more than the features of a few rows)."""
    return pd.Index(names)


def target(readmitted: pd.Series, kind: str = "any") -> pd.Series:
    """The label: any readmission (`<30` or `>30`), or 30-day readmission (`<30`) when kind is '30day'."""
    positive = ["<30"] if kind == "30day" else ["<30", ">30"]
    return readmitted.isin(positive).astype(int)


# Features computed from several input columns: the columns, the features whose values say how much of
# the feature each column makes (one per column, in the same order), and that share from those values.
DERIVED_FEATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...], object]] = {
    "total_prior_visits": (VISIT_COLUMNS, VISIT_COLUMNS, lambda visits: visits),
    "medications_active": (
        encounter_columns.MEDICATIONS,
        tuple(f"med_{m.replace('-', '_')}" for m in encounter_columns.MEDICATIONS),
        lambda ranks: ranks > 0,
    ),
    "medications_changed": (
        encounter_columns.MEDICATIONS,
        tuple(f"med_{m.replace('-', '_')}" for m in encounter_columns.MEDICATIONS),
        lambda ranks: ranks >= 2,
    ),
}


@lru_cache
def feature_sources() -> dict[str, tuple[str, ...]]:
    """The input column(s) each output feature is computed from, in output order.

    Most features come from one column (a one-hot level, a count, an ICD-9 group of one
    diagnosis, one medication); `DERIVED_FEATURES` come from several.
    """
    sources: dict[str, tuple[str, ...]] = {}
    for column, encoding in CATEGORICAL:
        sources |= dict.fromkeys(encoding.names, (column,))
    sources |= {column: (column,) for column in COUNT_COLUMNS}
    sources["total_prior_visits"] = DERIVED_FEATURES["total_prior_visits"][0]
    for column in encounter_columns.DIAGNOSIS_COLUMNS:
        sources |= {f"{column}_{group}": (column,) for group in encounter_columns.DIAGNOSIS_GROUPS}
    sources |= dict.fromkeys(GLUCOSE.names, ("max_glu_serum",)) | dict.fromkeys(A1C.names, ("A1Cresult",))
    sources |= {f"med_{m.replace('-', '_')}": (m,) for m in encounter_columns.MEDICATIONS}
    sources |= {name: DERIVED_FEATURES[name][0] for name in ("medications_active", "medications_changed")}
    sources |= dict.fromkeys(CHANGE.names, ("change",)) | dict.fromkeys(DIABETES_MEDICATION.names, ("diabetesMed",))
    return sources
