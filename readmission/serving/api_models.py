"""Request and response models of the inference API, generated from `readmission.encounter_columns`.

One `FieldSpec` per raw input column says what the column accepts (a closed vocabulary,
a code table, a count range or free text), what it means and what a missing value
defaults to. The pydantic request model (JSON, and the OpenAPI schema), and the fast JSON
decoder and the CSV checker of `readmission.serving.batch_input`, are all built from these
specs, so every input path accepts exactly the same encounters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError, PydanticUndefined

from readmission import encounter_columns

MAX_FACTORS = 5  # readmission.explain.MAX_FACTORS: the factors an explained answer lists
MAX_TEXT_LENGTH = 64  # ICD-9 codes and specialty names are far shorter; bounds what a request can carry
RiskBand = Literal["low", "medium", "high"]
RISK_BANDS: tuple[str, ...] = get_args(RiskBand)
RISK_LABELS = {
    "low": "Low risk of readmission",
    "medium": "Moderate risk of readmission",
    "high": "High risk of readmission",
}
# Columns of the data set a request may carry that the model does not use (rows can be sent as they are).
IGNORED_FIELD_TYPES: dict[str, Any] = {
    "encounter_id": int | str | None,
    "patient_nbr": int | str | None,
    "readmitted": Literal[encounter_columns.TARGET_VALUES] | None,
}
IGNORED_COLUMNS = tuple(IGNORED_FIELD_TYPES)

CODE_TABLES: dict[str, dict[int, str]] = {
    "admission_type_id": encounter_columns.ADMISSION_TYPES,
    "discharge_disposition_id": encounter_columns.DISCHARGE_DISPOSITIONS,
    "admission_source_id": encounter_columns.ADMISSION_SOURCES,
}
# The data set's own "missing" meaning of each optional column; columns not listed are required.
MISSING_MEANING: dict[str, Any] = {
    "race": encounter_columns.MISSING,
    "gender": "Unknown/Invalid",
    "weight": encounter_columns.MISSING,
    "admission_type_id": 6,  # NULL
    "discharge_disposition_id": 18,  # NULL
    "admission_source_id": 17,  # NULL
    "payer_code": encounter_columns.MISSING,
    "medical_specialty": encounter_columns.MISSING,
    **dict.fromkeys(encounter_columns.DIAGNOSIS_COLUMNS, encounter_columns.MISSING),
    "max_glu_serum": encounter_columns.NOT_TAKEN,
    "A1Cresult": encounter_columns.NOT_TAKEN,
    **dict.fromkeys(encounter_columns.MEDICATIONS, "No"),
    "change": "No",
    "diabetesMed": "No",
}
# Closed vocabularies that also accept the missing marker `?` (as the data set does).
MAY_BE_MISSING = ("race", "weight", "payer_code")

DESCRIPTIONS = {
    "race": "Race as recorded.",
    "gender": "Gender as recorded.",
    "age": "Age bracket in years.",
    "weight": "Weight bracket in pounds; rarely recorded.",
    "admission_type_id": "Admission type (code table of the data set).",
    "discharge_disposition_id": "Where the patient went at discharge (code table of the data set).",
    "admission_source_id": "Where the patient was admitted from (code table of the data set).",
    "time_in_hospital": "Days from admission to discharge.",
    "payer_code": "Payer, e.g. MC = Medicare, HM = HMO, SP = self-pay, BC = Blue Cross.",
    "medical_specialty": "Specialty of the admitting physician. Any text is accepted; the model knows these: "
    + ", ".join(encounter_columns.MEDICAL_SPECIALTIES)
    + "; others count as 'other'.",
    "num_lab_procedures": "Lab tests performed during the encounter.",
    "num_procedures": "Procedures other than lab tests performed during the encounter.",
    "num_medications": "Distinct generic drugs administered during the encounter.",
    "number_outpatient": "Outpatient visits in the year before the encounter.",
    "number_emergency": "Emergency visits in the year before the encounter.",
    "number_inpatient": "Inpatient admissions in the year before the encounter.",
    "diag_1": "Primary diagnosis as an ICD-9 code (e.g. 428, 250.01, V57, E878).",
    "diag_2": "Secondary diagnosis as an ICD-9 code.",
    "diag_3": "Additional secondary diagnosis as an ICD-9 code.",
    "number_diagnoses": "Diagnoses entered for the encounter.",
    "max_glu_serum": "Maximum glucose serum test result in mg/dL; 'None' means not taken.",
    "A1Cresult": "HbA1c test result in %; 'None' means not taken.",
    "change": "Change of diabetes medications: 'Ch' changed, 'No' no change.",
    "diabetesMed": "Any diabetes medication prescribed.",
    **{
        medication: f"{medication}: 'No' not prescribed, 'Steady' dose unchanged, 'Up' increased, 'Down' decreased."
        for medication in encounter_columns.MEDICATIONS
    },
}
EXAMPLE_ENCOUNTER: dict[str, Any] = {
    "race": "Caucasian",
    "gender": "Female",
    "age": "[70-80)",
    "weight": "?",
    "admission_type_id": 1,
    "discharge_disposition_id": 1,
    "admission_source_id": 7,
    "time_in_hospital": 5,
    "payer_code": "MC",
    "medical_specialty": "InternalMedicine",
    "num_lab_procedures": 45,
    "num_procedures": 1,
    "num_medications": 16,
    "number_outpatient": 0,
    "number_emergency": 0,
    "number_inpatient": 1,
    "diag_1": "428",
    "diag_2": "250.01",
    "diag_3": "401",
    "number_diagnoses": 9,
    "max_glu_serum": "None",
    "A1Cresult": ">8",
    **dict.fromkeys(encounter_columns.MEDICATIONS, "No"),
    "metformin": "Steady",
    "insulin": "Up",
    "change": "Ch",
    "diabetesMed": "Yes",
}


@dataclass(frozen=True)
class FieldSpec:
    """What one raw input column accepts: a vocabulary, a code table, a count range, or free text."""

    column: str
    description: str
    default: Any = PydanticUndefined  # PydanticUndefined: required
    vocabulary: tuple[str, ...] | None = None
    codes: dict[int, str] | None = None
    count_range: tuple[int, int] | None = None

    @property
    def required(self) -> bool:
        return self.default is PydanticUndefined

    def allowed_text(self) -> str:
        """The accepted values, in words, for the documentation and error messages."""
        if self.vocabulary is not None:
            return "one of " + ", ".join(repr(v) for v in self.vocabulary)
        if self.codes is not None:
            return "one of " + "; ".join(f"{code} = {meaning}" for code, meaning in self.codes.items())
        if self.count_range is not None:
            return f"a whole number from {self.count_range[0]} to {self.count_range[1]}"
        return f"any text up to {MAX_TEXT_LENGTH} characters ('{encounter_columns.MISSING}' = not recorded)"

    def documentation(self) -> str:
        default = "Required." if self.required else f"Default {self.default!r} (the data set's 'missing')."
        return f"{self.description} Allowed: {self.allowed_text()}. {default}"


def _field_spec(column: str) -> FieldSpec:
    common = {
        "column": column,
        "description": DESCRIPTIONS[column],
        "default": MISSING_MEANING.get(column, PydanticUndefined),
    }
    if column in encounter_columns.VOCABULARIES:
        extra = (encounter_columns.MISSING,) if column in MAY_BE_MISSING else ()
        return FieldSpec(**common, vocabulary=encounter_columns.VOCABULARIES[column] + extra)
    if column == "payer_code":  # the data set's complete list of payers
        return FieldSpec(**common, vocabulary=encounter_columns.PAYER_CODES + (encounter_columns.MISSING,))
    if column in CODE_TABLES:
        return FieldSpec(**common, codes=CODE_TABLES[column])
    if column in encounter_columns.COUNT_RANGES:
        return FieldSpec(**common, count_range=encounter_columns.COUNT_RANGES[column])
    return FieldSpec(**common)  # free text: ICD-9 codes (unknown ones map to "other") and specialties


FIELDS: dict[str, FieldSpec] = {column: _field_spec(column) for column in encounter_columns.FEATURE_INPUT_COLUMNS}


def _no_bool_or_float(value: Any) -> Any:
    """Codes are JSON integers, but pydantic's Literal takes true and 1.0 as 1 even in strict mode."""
    if isinstance(value, bool | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value  # text goes on to the Literal, whose error lists the codes


def _annotation(spec: FieldSpec) -> Any:
    if spec.vocabulary is not None:
        return Literal[spec.vocabulary]
    if spec.codes is not None:
        return Annotated[Literal[tuple(spec.codes)], BeforeValidator(_no_bool_or_float)]
    if spec.count_range is not None:
        return Annotated[int, Field(ge=spec.count_range[0], le=spec.count_range[1])]
    return Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]


def _pydantic_field(spec: FieldSpec) -> tuple[Any, Any]:
    field = Field(spec.default, description=spec.documentation(), examples=[EXAMPLE_ENCOUNTER[spec.column]])
    return _annotation(spec), field


class _EncounterBase(BaseModel):
    # Strict: numbers must be JSON numbers and text JSON strings; unknown fields are typos, not data.
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"examples": [EXAMPLE_ENCOUNTER]})


# The fields are built from FIELDS at import time, which create_model's overloads cannot type.
Encounter = create_model(  # type: ignore[call-overload]
    "Encounter",
    __base__=_EncounterBase,
    __doc__="One hospital encounter of a diabetic patient, in the data set's own raw vocabulary.",
    **{column: _pydantic_field(spec) for column, spec in FIELDS.items()},
    # Last, after the model's inputs (see `encounter_row`): accepted so rows of the data set can be sent as they are.
    **{
        column: (kind, Field(None, description="Ignored by the model.")) for column, kind in IGNORED_FIELD_TYPES.items()
    },
)
INPUT_COUNT = len(FIELDS)


def encounter_row(encounter: BaseModel) -> list[Any]:
    """The model's input values of a validated encounter, in `encounter_columns.FEATURE_INPUT_COLUMNS` order."""
    return list(encounter.__dict__.values())[:INPUT_COUNT]  # fields are declared in that order, ignored ones last


# --- responses --------------------------------------------------------------------------


class RowPrediction(BaseModel):
    """The model's answer for one encounter."""

    prediction: Literal[0, 1] = Field(
        description="1: a readmission is expected (probability at or above the model's decision threshold), 0: not.",
        examples=[1],
    )
    probability: float = Field(ge=0, le=1, description="Predicted probability of a readmission.", examples=[0.64])
    risk_band: RiskBand = Field(
        description="low / medium / high, by the RISK_MEDIUM_THRESHOLD and RISK_HIGH_THRESHOLD settings.",
        examples=["high"],
    )
    label: str = Field(description="The risk band in plain words.", examples=[RISK_LABELS["high"]])


class Factor(BaseModel):
    """One request field that moved this patient's risk, and by how much (see `readmission.explain`)."""

    field: str = Field(description="The request field.", examples=["number_inpatient"])
    label: str = Field(
        description="The field in clinical words, as the UI labels it.",
        examples=["Inpatient admissions in the past year"],
    )
    value: Any = Field(description="The patient's value of the field, as sent (null: not recorded).", examples=[4])
    value_label: str = Field(description="The value in clinical words.", examples=["4"])
    contribution: float = Field(
        description="Signed contribution to the log-odds of a readmission: the base "
        "value plus every field's contribution is the model's log-odds.",
        examples=[0.42],
    )
    direction: Literal["raises", "lowers"] = Field(description="Whether the field raises or lowers the risk.")


class Explained(BaseModel):
    """The explanation fields of an answer: present when the request asked for `explain=true`."""

    factors: list[Factor] | None = Field(
        None,
        description=f"With explain=true: the at most {MAX_FACTORS} fields that moved the risk most, largest first.",
    )
    factors_scale: Literal["log-odds"] | None = Field(None, description="The scale of the contributions.")
    base_log_odds: float | None = Field(
        None, description="The model's log-odds before any field is considered (the average over its training data)."
    )


class ExplainedRowPrediction(Explained, RowPrediction):
    """The model's answer for one encounter of a batch, explained when the request asked for it."""


class Prediction(Explained, RowPrediction):
    """The model's answer for one encounter, and the model that gave it."""

    model_name: str = Field(description="Registered model name.", examples=["diabetes-readmission"])
    model_version: str | None = Field(
        description="Registered version; null for a model loaded from a path.", examples=["3"]
    )


class BatchPrediction(BaseModel):
    """The model's answers for a batch, in the order of the request's encounters."""

    model_name: str = Field(examples=["diabetes-readmission"])
    model_version: str | None = Field(examples=["3"])
    rows: int = Field(description="Number of encounters scored.", examples=[1])
    predictions: list[ExplainedRowPrediction]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model_name: str
    model_version: str | None


class InputField(BaseModel):
    name: str
    required: bool
    allowed: str
    default: Any = None


class GroupMetrics(BaseModel):
    """The model's test metrics on one patient group (null: too few encounters to score)."""

    attribute: Literal["race", "gender", "age_band"]
    group: str
    encounters: int
    status: Literal["scored", "too small"]
    roc_auc: float | None
    ece: float | None = Field(description="Expected calibration error, 10 bins.")
    positive_rate: float | None = Field(description="Share predicted positive at the decision threshold.")
    recall: float | None
    readmitted_rate: float | None = Field(description="Share actually readmitted.")


class ModelCard(BaseModel):
    """The model in service: where it came from, how good it was, and what it takes."""

    name: str
    version: str | None
    alias: str | None
    uri: str = Field(description="What was loaded, e.g. models:/diabetes-readmission/3.")
    run_id: str | None
    metrics: dict[str, float] = Field(description="Metrics of the training run (test_roc_auc, ...).")
    tags: dict[str, str] = Field(description="Lineage tags of the run and the registered version.")
    decision_threshold: float
    groups: list[GroupMetrics] = Field(default_factory=list, description="Test metrics per patient group.")
    loaded_at: datetime
    load_seconds: float
    input_fields: list[InputField]


class ReloadResult(BaseModel):
    outcome: Literal["loaded", "unchanged"]
    model_version: str | None
    previous_version: str | None


class ErrorMessage(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: 'body', then the row (batch) and the field.")
    msg: str
    type: str


class ValidationErrors(BaseModel):
    detail: list[FieldError]


def input_fields() -> list[InputField]:
    """The documented input fields, for the model card."""
    return [
        InputField(
            name=s.column, required=s.required, allowed=s.allowed_text(), default=None if s.required else s.default
        )
        for s in FIELDS.values()
    ]
