"""The single-patient form, described as data: sections, fields, clinical labels and defaults.

Every field is one raw column of the data set (`schema.FEATURE_INPUT_COLUMNS`), so what a
clinician picks is sent to the API exactly as the data set spells it, and it is checked by
the API's own request model (`readmission.serving.schemas.Encounter`) before it is sent.
The labels are what a clinician reads: code-table descriptions instead of ids, "Not
measured" instead of `None`, "Not recorded" instead of `?`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from readmission import schema
from readmission.features import VISIT_COLUMNS, diagnosis_groups
from readmission.serving.schemas import Encounter

NOT_RECORDED = "Not recorded"
NOT_MEASURED = "Not measured"


@dataclass(frozen=True)
class Choice:
    """A closed list of raw values, each shown with its clinical label."""

    column: str
    label: str
    labels: Mapping[Any, str]  # raw value -> what the clinician reads, in display order
    default: object
    help: str = ""

    @property
    def options(self) -> list[object]:
        return list(self.labels)


@dataclass(frozen=True)
class Count:
    """A whole number within the data set's plausible range (`schema.COUNT_RANGES`)."""

    column: str
    label: str
    default: int
    help: str = ""

    @property
    def bounds(self) -> tuple[int, int]:
        return schema.COUNT_RANGES[self.column]


@dataclass(frozen=True)
class DiagnosisCode:
    """An ICD-9 code typed by the clinician; blank means not recorded."""

    column: str
    label: str
    default: str = ""
    help: str = "ICD-9 code, e.g. 428 (heart failure), 250.01 (diabetes), V45, E878. Leave blank if none."


FormField = Choice | Count | DiagnosisCode


@dataclass(frozen=True)
class Section:
    """A group of fields, in the order a chart reads."""

    title: str
    fields: tuple[FormField, ...]
    columns: int = 3
    caption: str = ""
    collapsed: bool = False  # shown in a closed expander


def _labelled(values: Iterable[object], relabel: Mapping[object, str] | None = None) -> dict[object, str]:
    """The values in order, each with its label (itself unless `relabel` says otherwise)."""
    relabel = relabel or {}
    return {value: relabel.get(value, str(value)) for value in values}


def _age_label(bracket: str) -> str:
    low, high = bracket.strip("[)").split("-")
    return f"{low}–{int(high) - 1} years"


MEDICATION_LABELS = _labelled(schema.MEDICATION_STATUSES, {
    "No": "Not prescribed", "Steady": "Steady dose", "Up": "Dose increased", "Down": "Dose decreased",
})  # fmt: skip
GROUP_LABELS = {
    "circulatory": "Circulatory system", "respiratory": "Respiratory system", "digestive": "Digestive system",
    "diabetes": "Diabetes", "injury": "Injury and poisoning", "musculoskeletal": "Musculoskeletal system",
    "genitourinary": "Genitourinary system", "neoplasms": "Neoplasms", "other": "Other conditions",
    "v_code": "Supplementary factors (V code)", "e_code": "External cause of injury (E code)",
    "missing": NOT_RECORDED,
}  # fmt: skip
# Numeric codes 001-999 with up to two decimals, V codes and E codes.
ICD9_PATTERN = re.compile(r"^(\d{1,3}(\.\d{1,2})?|V\d{2}(\.\d{1,2})?|E\d{3}(\.\d)?)$", re.IGNORECASE)

SECTIONS: tuple[Section, ...] = (
    Section("Demographics", (
        Choice("race", "Race", _labelled((*schema.RACES, schema.MISSING),
                                         {"AfricanAmerican": "African American", schema.MISSING: NOT_RECORDED}),
               "Caucasian"),
        Choice("gender", "Gender", _labelled(schema.GENDERS, {"Unknown/Invalid": "Unknown"}), "Female"),
        Choice("age", "Age", {bracket: _age_label(bracket) for bracket in schema.AGE_BRACKETS}, "[70-80)"),
    )),
    Section("Admission", (
        Choice("admission_type_id", "Admission type", schema.ADMISSION_TYPES, 1),
        Choice("admission_source_id", "Admitted from", schema.ADMISSION_SOURCES, 7),
        Choice("discharge_disposition_id", "Discharge disposition", schema.DISCHARGE_DISPOSITIONS, 1),
        Count("time_in_hospital", "Days in hospital", 4, "From admission to discharge."),
        Choice("medical_specialty", "Admitting physician's specialty",
               _labelled((schema.MISSING, *schema.MEDICAL_SPECIALTIES), {schema.MISSING: NOT_RECORDED}),
               schema.MISSING),
    )),
    Section("History", (
        Count("number_outpatient", "Outpatient visits", 0),
        Count("number_emergency", "Emergency visits", 0),
        Count("number_inpatient", "Inpatient admissions", 0),
    ), caption="Visits in the year before this admission."),
    Section("This stay", (
        Count("num_lab_procedures", "Lab tests", 40),
        Count("num_procedures", "Procedures (other than lab tests)", 1),
        Count("num_medications", "Distinct medications given", 15),
        Count("number_diagnoses", "Diagnoses entered", 7),
    ), columns=4),
    Section("Diagnoses", (
        DiagnosisCode("diag_1", "Primary diagnosis", "428"),
        DiagnosisCode("diag_2", "Secondary diagnosis", "250.01"),
        DiagnosisCode("diag_3", "Additional diagnosis", "401"),
    ), caption="ICD-9 codes; the group each code falls into is shown below it."),
    Section("Lab results", (
        Choice("A1Cresult", "HbA1c", _labelled(schema.A1C_VALUES, {
            schema.NOT_TAKEN: NOT_MEASURED, "Norm": "Normal", ">7": "Above 7%", ">8": "Above 8%"}), schema.NOT_TAKEN),
        Choice("max_glu_serum", "Maximum glucose serum", _labelled(schema.MAX_GLU_SERUM_VALUES, {
            schema.NOT_TAKEN: NOT_MEASURED, "Norm": "Normal", ">200": "Above 200 mg/dL", ">300": "Above 300 mg/dL"}),
               schema.NOT_TAKEN),
    ), columns=2),
    Section("Diabetes medications", tuple(
        Choice(medication, medication.capitalize(), MEDICATION_LABELS, "No") for medication in schema.MEDICATIONS
    ), columns=4, collapsed=True),
    Section("Treatment", (
        Choice("change", "Change of diabetes medication", _labelled(schema.CHANGE_VALUES, {
            "No": "No change", "Ch": "Changed"}), "No"),
        Choice("diabetesMed", "Diabetes medication prescribed", _labelled(schema.DIABETES_MED_VALUES), "Yes"),
    ), columns=2),
)  # fmt: skip

FIELDS: dict[str, FormField] = {f.column: f for section in SECTIONS for f in section.fields}


def default_values() -> dict[str, object]:
    """The form's starting values, keyed by column."""
    return {column: f.default for column, f in FIELDS.items()}


def encounter_payload(values: Mapping[str, object]) -> dict[str, object]:
    """The request body for one encounter: raw column names and values; blank codes are left out.

    A blank field is omitted so the API applies the data set's missing meaning itself.
    """
    payload: dict[str, object] = {}
    for column, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "":
            payload[column] = value
    return payload


def field_errors(payload: Mapping[str, object]) -> dict[str, str]:
    """What the API's request model says is wrong, by column; empty when the encounter is valid."""
    try:
        Encounter.model_validate(payload)
    except ValidationError as error:
        return {".".join(str(p) for p in e["loc"]) or "encounter": e["msg"] for e in error.errors(include_url=False)}
    return {}


def form_problems(values: Mapping[str, object]) -> dict[str, str]:
    """What is wrong with the form, by column: malformed diagnosis codes, then what the API's model rejects."""
    problems = {column: f"'{values[column]}' is not an ICD-9 code (e.g. 428, 250.01, V45, E878)."
                for column, field in FIELDS.items()
                if isinstance(field, DiagnosisCode) and not looks_like_icd9(str(values.get(column) or ""))}  # fmt: skip
    return field_errors(encounter_payload(values)) | problems


def diagnosis_group(code: str | None) -> str:
    """The ICD-9 group of one code, in words: the grouping the model itself uses."""
    value = code.strip() if code and code.strip() else schema.MISSING
    return GROUP_LABELS[diagnosis_groups(np.array([value], dtype=object))[0]]


def looks_like_icd9(code: str | None) -> bool:
    """True for a well-formed ICD-9 code (001-999, Vnn, Ennn, with decimals); blank counts as well-formed."""
    return not code or not code.strip() or bool(ICD9_PATTERN.match(code.strip()))


def medication_summary(values: Mapping[str, object]) -> str:
    """The medications that are prescribed, in words, for the title of the collapsed section."""
    active = [f"{FIELDS[m].label} ({MEDICATION_LABELS[values[m]].lower()})"
              for m in schema.MEDICATIONS if values.get(m, "No") != "No"]  # fmt: skip
    return ", ".join(active) if active else "none prescribed"


# The fields the form leaves at the data set's "missing" (rarely recorded, or not clinical), in words.
UNLISTED_LABELS = {"weight": "Weight", "payer_code": "Payer"}


def field_label(column: str) -> str:
    """The field's label as the form shows it, with what its section's caption adds (the year of the visits)."""
    label = FIELDS[column].label if column in FIELDS else UNLISTED_LABELS[column]
    return f"{label} in the past year" if column in VISIT_COLUMNS else label


def value_label(column: str, value: object) -> str:
    """A raw value as the form shows it (code-table descriptions, "Not recorded" for `?`)."""
    field = FIELDS.get(column)
    if value is None or (column in UNLISTED_LABELS and value == schema.MISSING):
        return NOT_RECORDED
    if isinstance(field, Choice):
        return str(field.labels.get(value, value))
    if isinstance(field, DiagnosisCode):
        code = "" if value is None or value == schema.MISSING else str(value)
        return f"{code} ({diagnosis_group(code)})" if code else NOT_RECORDED
    return str(value)
