"""Cleaning and feature engineering as one scikit-learn transformer.

`EncounterFeatures` turns raw encounter columns (the data set's own vocabulary, as text
or numbers) into a fixed set of numeric features. It writes the `diabetes_clean` table
and it is the first step of every logged model, so training and serving cannot drift
apart. Its vocabularies are fixed constants, not learned, so every batch yields the same
columns, and anything unseen maps to a defined "other" level instead of raising.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from readmission import schema

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


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The input columns as object arrays, converted once; absent or empty cells are the missing marker."""
    table = frame.reindex(columns=schema.FEATURE_INPUT_COLUMNS).to_numpy(dtype=object, copy=True)
    table[pd.isna(table)] = schema.MISSING
    return dict(zip(schema.FEATURE_INPUT_COLUMNS, table.T))


def _number(values: np.ndarray) -> np.ndarray:
    """Values as floats; non-numeric or missing values become NaN."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def _code(values: np.ndarray) -> np.ndarray:
    """Id values (e.g. admission_type_id) as canonical strings: 1, "1" and "1.0" agree."""
    numbers = _number(values)
    return np.where(np.isfinite(numbers), np.nan_to_num(numbers).astype(np.int64).astype(str), schema.MISSING)


def _is_any(values: np.ndarray, members: tuple[str, ...]) -> np.ndarray:
    """Element-wise membership by comparison (cheaper than np.isin on small object arrays)."""
    return np.logical_or.reduce([values == m for m in members]) if members else np.zeros(values.shape, bool)


def _ordinal(values: np.ndarray, order: dict[str, int]) -> np.ndarray:
    """Map values through `order`; unknown values get 0."""
    result = np.zeros(values.shape)
    for level, rank in order.items():
        if rank:
            result += rank * (values == level)
    return result


def diagnosis_groups(codes: np.ndarray | pd.Series) -> np.ndarray:
    """The ICD-9 group of each code (see `schema.DIAGNOSIS_GROUPS`), computed once per distinct code."""
    values = np.asarray(codes, dtype=object)
    values = np.where(pd.isna(values), schema.MISSING, values)
    index, uniques = pd.factorize(values)
    distinct = np.char.upper(np.char.strip(np.asarray(uniques, dtype=str).reshape(-1)))
    numeric = pd.to_numeric(distinct, errors="coerce").astype(float)
    first = distinct.astype("<U1")  # the first character
    conditions = [np.isin(distinct, ["", schema.MISSING]), first == "V", first == "E"]
    choices = ["missing", "v_code", "e_code"]
    for group, ranges in ICD9_RANGES:
        conditions.append(np.logical_or.reduce([(numeric >= lo) & (numeric <= hi) for lo, hi in ranges]))
        choices.append(group)
    groups = np.select(conditions, choices, default="other").astype(object)
    return groups[index] if len(index) else np.array([], dtype=object)


def _one_hot(values: np.ndarray, prefix: str, levels: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """One column per level plus `<prefix>_other` for anything not listed."""
    columns = {f"{prefix}_{name}": _is_any(values, members).astype(float) for name, members in levels.items()}
    columns[f"{prefix}_other"] = 1.0 - np.sum(list(columns.values()), axis=0)
    return columns


def _levels(values: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {v.lower().replace("/", "_").replace("-", "_"): (v,) for v in values}


class EncounterFeatures(TransformerMixin, BaseEstimator):
    """Raw encounter columns -> numeric features with a fixed, documented set of columns."""

    def fit(self, X: pd.DataFrame, y=None) -> "EncounterFeatures":  # noqa: N803 (sklearn's naming)
        """Nothing to learn: the vocabularies are the data set's own, fixed in `schema`."""
        self.n_features_out_ = len(self.get_feature_names_out())
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        """Engineer the features of every row at once (vectorized; no loop over rows)."""
        if not isinstance(X, pd.DataFrame):
            X = pd.DataFrame(X, columns=schema.FEATURE_INPUT_COLUMNS)
        raw = _columns(X)
        columns: dict[str, np.ndarray] = {}
        race = np.where(raw["race"] == schema.MISSING, "missing", raw["race"])
        columns |= _one_hot(race, "race", _levels(RACE_LEVELS))
        columns["gender_female"] = (raw["gender"] == "Female").astype(float)
        columns["gender_male"] = (raw["gender"] == "Male").astype(float)
        age = raw["age"]
        columns["age_years"] = np.where(_is_any(age, schema.AGE_BRACKETS), _ordinal(age, AGE_MIDPOINTS), UNKNOWN_AGE)
        columns["weight_recorded"] = _is_any(raw["weight"], schema.WEIGHT_BRACKETS).astype(float)
        columns |= _one_hot(_code(raw["admission_type_id"]), "admission_type", {v: (v,) for v in ADMISSION_TYPE_LEVELS})
        columns |= _one_hot(_code(raw["discharge_disposition_id"]), "discharge", DISCHARGE_LEVELS)
        columns |= _one_hot(_code(raw["admission_source_id"]), "admission_source", {v: (v,) for v in ADMISSION_SOURCE_LEVELS})
        specialty = np.where(raw["medical_specialty"] == schema.MISSING, "missing", raw["medical_specialty"])
        columns |= _one_hot(specialty, "specialty", _levels(SPECIALTY_LEVELS))
        payer = np.where(raw["payer_code"] == schema.MISSING, "missing", raw["payer_code"])
        columns |= _one_hot(payer, "payer", _levels(PAYER_LEVELS))

        for column in COUNT_COLUMNS:
            columns[column] = np.nan_to_num(_number(raw[column]), nan=0.0)
        visits = ("number_outpatient", "number_emergency", "number_inpatient")
        columns["total_prior_visits"] = sum(columns[c] for c in visits)

        for column in schema.DIAGNOSIS_COLUMNS:
            groups = diagnosis_groups(raw[column])
            for group in schema.DIAGNOSIS_GROUPS:
                columns[f"{column}_{group}"] = (groups == group).astype(float)

        glucose, a1c = raw["max_glu_serum"], raw["A1Cresult"]
        columns["max_glu_serum_level"] = _ordinal(glucose, GLUCOSE_ORDER)
        columns["max_glu_serum_taken"] = _is_any(glucose, schema.MAX_GLU_SERUM_VALUES[1:]).astype(float)
        columns["a1c_level"] = _ordinal(a1c, A1C_ORDER)
        columns["a1c_taken"] = _is_any(a1c, schema.A1C_VALUES[1:]).astype(float)

        medications = _ordinal(np.column_stack([raw[m] for m in schema.MEDICATIONS]), MEDICATION_ORDER)
        for i, medication in enumerate(schema.MEDICATIONS):
            columns[f"med_{medication.replace('-', '_')}"] = medications[:, i]
        columns["medications_active"] = (medications > 0).sum(axis=1).astype(float)
        columns["medications_changed"] = (medications >= 2).sum(axis=1).astype(float)
        columns["medication_change"] = (raw["change"] == "Ch").astype(float)
        columns["diabetes_medication"] = (raw["diabetesMed"] == "Yes").astype(float)
        names = list(columns)
        return pd.DataFrame(np.column_stack([columns[n] for n in names]), columns=names, index=X.index)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The output columns, the same for every input."""
        return self.transform(pd.DataFrame(columns=list(schema.FEATURE_INPUT_COLUMNS))).columns.to_numpy(dtype=object)


def target(readmitted: pd.Series, kind: str = "any") -> pd.Series:
    """The label: any readmission (`<30` or `>30`), or 30-day readmission (`<30`) when kind is '30day'."""
    positive = ["<30"] if kind == "30day" else ["<30", ">30"]
    return readmitted.isin(positive).astype(int)
