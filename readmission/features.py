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

from readmission import schema
from readmission.validation import CODE_COLUMNS

# Category levels one-hot encoded; anything else (unseen values included) is "other".
RACE_LEVELS = (*schema.RACES, "missing")
ADMISSION_TYPE_LEVELS = ("1", "2", "3", "5", "6", "8")
DISCHARGE_LEVELS = {
    "home": ("1",), "short_term_hospital": ("2",), "snf": ("3",), "icf": ("4",),
    "inpatient_care": ("5",), "home_health": ("6",), "left_ama": ("7",),
    "expired": ("11", "19", "20", "21"), "hospice": ("13", "14"), "null": ("18",),
    "rehab": ("22",), "long_term_care": ("23",), "not_mapped": ("25", "26"), "psychiatric": ("28",),
}  # fmt: skip
ADMISSION_SOURCE_LEVELS = ("1", "2", "4", "5", "6", "7", "9", "17", "20")
SPECIALTY_LEVELS = (*schema.MEDICAL_SPECIALTIES, "missing")
PAYER_LEVELS = ("MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "missing")

GLUCOSE_ORDER = {"None": 0, "Norm": 1, ">200": 2, ">300": 3}
A1C_ORDER = {"None": 0, "Norm": 1, ">7": 2, ">8": 3}
MEDICATION_ORDER = {"No": 0, "Steady": 1, "Up": 2, "Down": 3}
AGE_MIDPOINTS = {bracket: 10 * i + 5 for i, bracket in enumerate(schema.AGE_BRACKETS)}
UNKNOWN_AGE = 65.0  # the data set's median bracket midpoint
COUNT_COLUMNS = tuple(schema.COUNT_RANGES)

# (group, inclusive code ranges) of Strack et al. 2014; 250.xx is matched on its integer part.
ICD9_RANGES: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("circulatory", ((390, 459.99), (785, 785.99))),
    ("respiratory", ((460, 519.99), (786, 786.99))),
    ("digestive", ((520, 579.99), (787, 787.99))),
    ("diabetes", ((250, 250.99),)),
    ("injury", ((800, 999.99),)),
    ("musculoskeletal", ((710, 739.99),)),
    ("genitourinary", ((580, 629.99), (788, 788.99))),
    ("neoplasms", ((140, 239.99),)),
)


INPUT_COLUMNS = pd.Index(schema.FEATURE_INPUT_COLUMNS)
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

    A DataFrame is matched by column name; an array must hold `schema.FEATURE_INPUT_COLUMNS` in order.
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
    values = np.append(np.asarray(values, dtype=object), schema.MISSING)
    return np.where(codes < 0, len(values) - 1, codes), values


def _column_by_column(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """`_cell_codes` of a frame with typed columns: pandas factorizes (Arrow) strings without Python objects."""
    codes, distinct, offset = [], [], 0
    for column in schema.FEATURE_INPUT_COLUMNS:
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
    if isinstance(X, pd.DataFrame) and len(X) >= COLUMN_BY_COLUMN_ROWS and any(t != object for t in X.dtypes):
        return _column_by_column(X)
    table = input_matrix(X)  # Python objects: one hash pass over all cells costs less than a call per column
    codes, distinct = _missing_as_marker(*pd.factorize(table.ravel()))
    return codes.reshape(table.shape).T, distinct


def _number(values: np.ndarray) -> np.ndarray:
    """Values as floats; non-numeric or missing values become NaN."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def _code(numbers: np.ndarray) -> np.ndarray:
    """Id numbers (e.g. admission_type_id) as canonical strings: 1, "1" and "1.0" agree."""
    return np.where(np.isfinite(numbers), np.nan_to_num(numbers).astype(np.int64).astype(str), schema.MISSING)


def _icd9_groups(codes: np.ndarray) -> np.ndarray:
    """The ICD-9 group of each code (strings or numbers; no missing values)."""
    distinct = np.char.upper(np.char.strip(np.asarray(codes, dtype=str).reshape(-1)))
    numeric = pd.to_numeric(distinct, errors="coerce").astype(float)
    first = distinct.astype("<U1")  # the first character
    conditions = [np.isin(distinct, ["", schema.MISSING]), first == "V", first == "E"]
    choices = ["missing", "v_code", "e_code"]
    for group, ranges in ICD9_RANGES:
        conditions.append(np.logical_or.reduce([(numeric >= lo) & (numeric <= hi) for lo, hi in ranges]))
        choices.append(group)
    return np.select(conditions, choices, default="other").astype(object)


def diagnosis_groups(codes: np.ndarray | pd.Series) -> np.ndarray:
    """The ICD-9 group of each code (see `schema.DIAGNOSIS_GROUPS`), computed once per distinct code."""
    values = np.asarray(codes, dtype=object)
    values = np.where(pd.isna(values), schema.MISSING, values)
    index, uniques = pd.factorize(values)
    return _icd9_groups(uniques)[index] if len(index) else np.array([], dtype=object)


@dataclass(frozen=True)
class Encoding:
    """A column's features as a lookup table: one row per level, and a last row for any value no level lists."""

    names: tuple[str, ...]
    level_of: dict[object, int]  # listed value -> its row of `table`
    table: np.ndarray  # (levels + 1) x len(names)

    def rows(self, values: np.ndarray) -> np.ndarray:
        """The row of `table` of each value (a dict lookup each: values are the few distinct ones)."""
        unlisted = len(self.table) - 1
        return np.fromiter((self.level_of.get(v, unlisted) for v in values), dtype=np.intp, count=len(values))


def _lookup(names: tuple[str, ...], features: dict[str, tuple[float, ...]], unlisted: tuple[float, ...]) -> Encoding:
    """Features given value by value (`features`), and `unlisted` for anything else."""
    return Encoding(names, {v: i for i, v in enumerate(features)}, np.array([*features.values(), unlisted], float))


def _one_hot(prefix: str, levels: dict[str, tuple[str, ...]]) -> Encoding:
    """One column per level plus `<prefix>_other` for anything not listed.

    A level named "other" (race "Other") has no column of its own: `<prefix>_other` stays
    in its place and is 1 only for unlisted values, so that level is all zeros.
    """
    table = np.eye(len(levels) + 1)
    names = [f"{prefix}_{name}" for name in levels]
    if "other" in levels:
        table[:, list(levels).index("other")] = table[:, -1]
        table = table[:, :-1]
    else:
        names.append(f"{prefix}_other")
    level_of = {member: i for i, members in enumerate(levels.values()) for member in members}
    return Encoding(tuple(names), level_of, table)


def _levels(values: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """One level per value, named in snake case; the level "missing" also takes the missing marker `?`."""
    levels = {v.lower().replace("/", "_").replace("-", "_"): (v,) for v in values}
    if "missing" in levels:
        levels["missing"] += (schema.MISSING,)
    return levels


def _indicator(name: str, members: tuple[str, ...]) -> Encoding:
    return _lookup((name,), {m: (1.0,) for m in members}, (0.0,))


def _test_result(prefix: str, order: dict[str, int]) -> Encoding:
    """A lab test: its ordinal level, and whether it was taken (any level but "None")."""
    features = {value: (float(rank), float(value != schema.NOT_TAKEN)) for value, rank in order.items()}
    return _lookup((f"{prefix}_level", f"{prefix}_taken"), features, (0.0, 0.0))


RACE = _one_hot("race", _levels(RACE_LEVELS))
GENDER = _lookup(("gender_female", "gender_male"), {"Female": (1.0, 0.0), "Male": (0.0, 1.0)}, (0.0, 0.0))
AGE = _lookup(("age_years",), {bracket: (float(age),) for bracket, age in AGE_MIDPOINTS.items()}, (UNKNOWN_AGE,))
WEIGHT = _indicator("weight_recorded", schema.WEIGHT_BRACKETS)
ADMISSION_TYPE = _one_hot("admission_type", {v: (v,) for v in ADMISSION_TYPE_LEVELS})
DISCHARGE = _one_hot("discharge", DISCHARGE_LEVELS)
ADMISSION_SOURCE = _one_hot("admission_source", {v: (v,) for v in ADMISSION_SOURCE_LEVELS})
SPECIALTY = _one_hot("specialty", _levels(SPECIALTY_LEVELS))
PAYER = _one_hot("payer", _levels(PAYER_LEVELS))
DIAGNOSIS_GROUP = _lookup(schema.DIAGNOSIS_GROUPS, {g: tuple(np.eye(len(schema.DIAGNOSIS_GROUPS))[i])
                          for i, g in enumerate(schema.DIAGNOSIS_GROUPS)}, (0.0,) * len(schema.DIAGNOSIS_GROUPS))  # fmt: skip
GLUCOSE = _test_result("max_glu_serum", GLUCOSE_ORDER)
A1C = _test_result("a1c", A1C_ORDER)
MEDICATION_RANK = _lookup(("rank",), {status: (float(rank),) for status, rank in MEDICATION_ORDER.items()}, (0.0,))
CHANGE = _indicator("medication_change", ("Ch",))
DIABETES_MEDICATION = _indicator("diabetes_medication", ("Yes",))
# Each raw column and its encoding, in output order; the counts and derived features follow the payer.
CATEGORICAL = (("race", RACE), ("gender", GENDER), ("age", AGE), ("weight", WEIGHT),
               ("admission_type_id", ADMISSION_TYPE), ("discharge_disposition_id", DISCHARGE),
               ("admission_source_id", ADMISSION_SOURCE), ("medical_specialty", SPECIALTY), ("payer_code", PAYER))  # fmt: skip
ID_COLUMNS = CODE_COLUMNS  # looked up by their id code
# Every encoding that looks a raw value up, by the column it encodes (the 23 medications share one).
LOOKUPS: dict[str, Encoding] = {**dict(CATEGORICAL), "max_glu_serum": GLUCOSE, "A1Cresult": A1C, "change": CHANGE,
                                "diabetesMed": DIABETES_MEDICATION, "medications": MEDICATION_RANK}  # fmt: skip
LOOKUP_POSITION = {column: i for i, column in enumerate(LOOKUPS)}


# Number, ICD-9 group row and row in each of `LOOKUPS` of every raw value seen so far: a few thousand
# in the whole data set, so requests mostly find theirs here. Bounded, as clients may send any text.
_FACTS: dict[object, tuple[float, int, tuple[int, ...]]] = {}
FACTS_LIMIT = 100_000


def _facts_of(values: list[object]) -> dict[object, tuple[float, int, tuple[int, ...]]]:
    """The `_FACTS` entry of each value, computed for all of them at once."""
    texts = np.array(values, dtype=object)
    numbers = _number(texts)
    ids = _code(numbers)
    by_column = LOOKUPS.items()
    lookups = np.column_stack([lookup.rows(ids if column in ID_COLUMNS else texts) for column, lookup in by_column])
    groups = DIAGNOSIS_GROUP.rows(_icd9_groups(texts))
    return dict(zip(values, zip(numbers.tolist(), groups.tolist(), map(tuple, lookups.tolist()))))


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
    numbers, groups, lookups = zip(*facts) if facts else ((), (), ())
    return (np.array(numbers, dtype=float), np.array(groups, dtype=np.intp),
            np.array(lookups, dtype=np.intp).reshape(len(facts), len(LOOKUPS)))  # fmt: skip


class EncounterFeatures(TransformerMixin, BaseEstimator):
    """Raw encounter columns -> numeric features with a fixed, documented set of columns."""

    def fit(self, X: pd.DataFrame, y=None) -> "EncounterFeatures":  # noqa: N803 (sklearn's naming)
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
        at = dict(zip(schema.FEATURE_INPUT_COLUMNS, codes))  # column -> index of each cell in `distinct`
        numbers, group_of, lookups = _value_facts(distinct)

        def rows(column: str, encoding: Encoding) -> Block:
            """The features of `column`: its encoding of each distinct value, gathered for each row."""
            return list(encoding.names), encoding.table[lookups[at[column], LOOKUP_POSITION[column]]]

        counts = np.nan_to_num(numbers, nan=0.0)[np.stack([at[c] for c in COUNT_COLUMNS], axis=1)]
        visits = [counts[:, COUNT_COLUMNS.index(c)] for c in VISIT_COLUMNS]
        group_rows = DIAGNOSIS_GROUP.table[group_of]
        ranks = MEDICATION_RANK.table[lookups[:, LOOKUP_POSITION["medications"]], 0]
        medications = ranks[np.stack([at[m] for m in schema.MEDICATIONS], axis=1)]
        blocks = [
            *(rows(column, encoding) for column, encoding in CATEGORICAL),
            (list(COUNT_COLUMNS), counts),
            (["total_prior_visits"], (visits[0] + visits[1] + visits[2])[:, None]),
            *(
                ([f"{column}_{g}" for g in schema.DIAGNOSIS_GROUPS], group_rows[at[column]])
                for column in schema.DIAGNOSIS_COLUMNS
            ),  # fmt: skip
            rows("max_glu_serum", GLUCOSE),
            rows("A1Cresult", A1C),
            ([f"med_{m.replace('-', '_')}" for m in schema.MEDICATIONS], medications),
            (
                ["medications_active", "medications_changed"],
                np.column_stack([(medications > 0).sum(axis=1), (medications >= 2).sum(axis=1)]).astype(float),
            ),
            rows("change", CHANGE),
            rows("diabetesMed", DIABETES_MEDICATION),
        ]
        names = tuple(name for block_names, _ in blocks for name in block_names)
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(np.hstack([values for _, values in blocks]), columns=_output_columns(names), index=index,
                            copy=False)  # fmt: skip

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The output columns, the same for every input."""
        return self.transform(pd.DataFrame(columns=list(schema.FEATURE_INPUT_COLUMNS))).columns.to_numpy(dtype=object)


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
    "medications_active": (schema.MEDICATIONS, tuple(f"med_{m.replace('-', '_')}" for m in schema.MEDICATIONS),
                           lambda ranks: ranks > 0),
    "medications_changed": (schema.MEDICATIONS, tuple(f"med_{m.replace('-', '_')}" for m in schema.MEDICATIONS),
                            lambda ranks: ranks >= 2),
}  # fmt: skip


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
    for column in schema.DIAGNOSIS_COLUMNS:
        sources |= {f"{column}_{group}": (column,) for group in schema.DIAGNOSIS_GROUPS}
    sources |= dict.fromkeys(GLUCOSE.names, ("max_glu_serum",)) | dict.fromkeys(A1C.names, ("A1Cresult",))
    sources |= {f"med_{m.replace('-', '_')}": (m,) for m in schema.MEDICATIONS}
    sources |= {name: DERIVED_FEATURES[name][0] for name in ("medications_active", "medications_changed")}
    sources |= dict.fromkeys(CHANGE.names, ("change",)) | dict.fromkeys(DIABETES_MEDICATION.names, ("diabetesMed",))
    return sources
