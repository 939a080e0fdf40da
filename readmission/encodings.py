"""How each encounter column's values become numbers: fixed levels, lookup tables and ICD-9 groups.

The vocabularies are constants, not learned, so every batch yields the same feature columns and an
unseen value maps to a defined "other" level. `readmission.features.EncounterFeatures` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from readmission import encounter_columns
from readmission.validation import CODE_COLUMNS

# Category levels one-hot encoded; anything else (unseen values included) is "other".
RACE_LEVELS = (*encounter_columns.RACES, "missing")
ADMISSION_TYPE_LEVELS = ("1", "2", "3", "5", "6", "8")
DISCHARGE_LEVELS = {
    "home": ("1",),
    "short_term_hospital": ("2",),
    "snf": ("3",),
    "icf": ("4",),
    "inpatient_care": ("5",),
    "home_health": ("6",),
    "left_ama": ("7",),
    "expired": ("11", "19", "20", "21"),
    "hospice": ("13", "14"),
    "null": ("18",),
    "rehab": ("22",),
    "long_term_care": ("23",),
    "not_mapped": ("25", "26"),
    "psychiatric": ("28",),
}
ADMISSION_SOURCE_LEVELS = ("1", "2", "4", "5", "6", "7", "9", "17", "20")
SPECIALTY_LEVELS = (*encounter_columns.MEDICAL_SPECIALTIES, "missing")
PAYER_LEVELS = ("MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "missing")

GLUCOSE_ORDER = {"None": 0, "Norm": 1, ">200": 2, ">300": 3}
A1C_ORDER = {"None": 0, "Norm": 1, ">7": 2, ">8": 3}
MEDICATION_ORDER = {"No": 0, "Steady": 1, "Up": 2, "Down": 3}
AGE_MIDPOINTS = {bracket: 10 * i + 5 for i, bracket in enumerate(encounter_columns.AGE_BRACKETS)}
UNKNOWN_AGE = 65.0  # the data set's median bracket midpoint

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


def numbers_of(values: np.ndarray) -> np.ndarray:
    """Values as floats; non-numeric or missing values become NaN."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def id_codes(numbers: np.ndarray) -> np.ndarray:
    """Id numbers (e.g. admission_type_id) as canonical strings: 1, "1" and "1.0" agree."""
    return np.where(
        np.isfinite(numbers), np.nan_to_num(numbers).astype(np.int64).astype(str), encounter_columns.MISSING
    )


def icd9_groups(codes: np.ndarray) -> np.ndarray:
    """The ICD-9 group of each code (strings or numbers; no missing values)."""
    distinct = np.char.upper(np.char.strip(np.asarray(codes, dtype=str).reshape(-1)))
    numeric = pd.to_numeric(distinct, errors="coerce").astype(float)
    first = distinct.astype("<U1")  # the first character
    conditions = [np.isin(distinct, ["", encounter_columns.MISSING]), first == "V", first == "E"]
    choices = ["missing", "v_code", "e_code"]
    for group, ranges in ICD9_RANGES:
        conditions.append(np.logical_or.reduce([(numeric >= lo) & (numeric <= hi) for lo, hi in ranges]))
        choices.append(group)
    return np.select(conditions, choices, default="other").astype(object)


def diagnosis_groups(codes: np.ndarray | pd.Series) -> np.ndarray:
    """The ICD-9 group of each code (see `encounter_columns.DIAGNOSIS_GROUPS`), computed once per distinct code."""
    values = np.asarray(codes, dtype=object)
    values = np.where(pd.isna(values), encounter_columns.MISSING, values)
    index, uniques = pd.factorize(values)
    return icd9_groups(uniques)[index] if len(index) else np.array([], dtype=object)


@dataclass(frozen=True)
class Encoding:
    """A column's features as a lookup table: one row per level, and a last row for any value no level lists."""

    names: tuple[str, ...]
    level_of: dict[Any, int]  # listed value -> its row of `table`
    table: np.ndarray  # (levels + 1) x len(names)

    def rows(self, values: np.ndarray) -> np.ndarray:
        """The row of `table` of each value (a dict lookup each: values are the few distinct ones)."""
        unlisted = len(self.table) - 1
        return np.fromiter((self.level_of.get(v, unlisted) for v in values), dtype=np.intp, count=len(values))


def _lookup(names: tuple[str, ...], features: Mapping[str, tuple[float, ...]], unlisted: tuple[float, ...]) -> Encoding:
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
    levels: dict[str, tuple[str, ...]] = {v.lower().replace("/", "_").replace("-", "_"): (v,) for v in values}
    if "missing" in levels:
        levels["missing"] += (encounter_columns.MISSING,)
    return levels


def _indicator(name: str, members: tuple[str, ...]) -> Encoding:
    return _lookup((name,), dict.fromkeys(members, (1.0,)), (0.0,))


def _test_result(prefix: str, order: dict[str, int]) -> Encoding:
    """A lab test: its ordinal level, and whether it was taken (any level but "None")."""
    features = {value: (float(rank), float(value != encounter_columns.NOT_TAKEN)) for value, rank in order.items()}
    return _lookup((f"{prefix}_level", f"{prefix}_taken"), features, (0.0, 0.0))


RACE = _one_hot("race", _levels(RACE_LEVELS))
GENDER = _lookup(("gender_female", "gender_male"), {"Female": (1.0, 0.0), "Male": (0.0, 1.0)}, (0.0, 0.0))
AGE = _lookup(("age_years",), {bracket: (float(age),) for bracket, age in AGE_MIDPOINTS.items()}, (UNKNOWN_AGE,))
WEIGHT = _indicator("weight_recorded", encounter_columns.WEIGHT_BRACKETS)
ADMISSION_TYPE = _one_hot("admission_type", {v: (v,) for v in ADMISSION_TYPE_LEVELS})
DISCHARGE = _one_hot("discharge", DISCHARGE_LEVELS)
ADMISSION_SOURCE = _one_hot("admission_source", {v: (v,) for v in ADMISSION_SOURCE_LEVELS})
SPECIALTY = _one_hot("specialty", _levels(SPECIALTY_LEVELS))
PAYER = _one_hot("payer", _levels(PAYER_LEVELS))
DIAGNOSIS_GROUP = _lookup(
    encounter_columns.DIAGNOSIS_GROUPS,
    {
        g: tuple(np.eye(len(encounter_columns.DIAGNOSIS_GROUPS))[i])
        for i, g in enumerate(encounter_columns.DIAGNOSIS_GROUPS)
    },
    (0.0,) * len(encounter_columns.DIAGNOSIS_GROUPS),
)
GLUCOSE = _test_result("max_glu_serum", GLUCOSE_ORDER)
A1C = _test_result("a1c", A1C_ORDER)
MEDICATION_RANK = _lookup(("rank",), {status: (float(rank),) for status, rank in MEDICATION_ORDER.items()}, (0.0,))
CHANGE = _indicator("medication_change", ("Ch",))
DIABETES_MEDICATION = _indicator("diabetes_medication", ("Yes",))
# Each raw column and its encoding, in output order; the counts and derived features follow the payer.
CATEGORICAL = (
    ("race", RACE),
    ("gender", GENDER),
    ("age", AGE),
    ("weight", WEIGHT),
    ("admission_type_id", ADMISSION_TYPE),
    ("discharge_disposition_id", DISCHARGE),
    ("admission_source_id", ADMISSION_SOURCE),
    ("medical_specialty", SPECIALTY),
    ("payer_code", PAYER),
)
ID_COLUMNS = CODE_COLUMNS  # looked up by their id code
# Every encoding that looks a raw value up, by the column it encodes (the 23 medications share one).
LOOKUPS: dict[str, Encoding] = {
    **dict(CATEGORICAL),
    "max_glu_serum": GLUCOSE,
    "A1Cresult": A1C,
    "change": CHANGE,
    "diabetesMed": DIABETES_MEDICATION,
    "medications": MEDICATION_RANK,
}
LOOKUP_POSITION = {column: i for i, column in enumerate(LOOKUPS)}
