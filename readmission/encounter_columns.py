"""The UCI "Diabetes 130-US hospitals" data set: columns, vocabularies and code tables.

These constants are the single description of the source format. The data API, the
validator, the feature transformer, the inference service's request model and the
clinician UI all read them from here.
"""

from __future__ import annotations

MISSING = "?"  # the file's own missing-value marker
NOT_TAKEN = "None"  # max_glu_serum / A1Cresult: the test was not taken (a value, not NaN)

ID_COLUMNS = ("encounter_id", "patient_nbr")
TARGET_COLUMN = "readmitted"
TARGET_VALUES = ("NO", ">30", "<30")

MEDICATIONS = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
MEDICATION_STATUSES = ("No", "Steady", "Up", "Down")

# Counts and their plausible ranges (inclusive); a value outside quarantines the row.
COUNT_RANGES: dict[str, tuple[int, int]] = {
    "time_in_hospital": (1, 14),
    "num_lab_procedures": (0, 200),
    "num_procedures": (0, 10),
    "num_medications": (0, 100),
    "number_outpatient": (0, 100),
    "number_emergency": (0, 100),
    "number_inpatient": (0, 50),
    "number_diagnoses": (1, 20),
}

DIAGNOSIS_COLUMNS = ("diag_1", "diag_2", "diag_3")

# The 50 source columns, in the file's order.
COLUMNS = (
    "encounter_id",
    "patient_nbr",
    "race",
    "gender",
    "age",
    "weight",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "time_in_hospital",
    "payer_code",
    "medical_specialty",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "diag_1",
    "diag_2",
    "diag_3",
    "number_diagnoses",
    "max_glu_serum",
    "A1Cresult",
    *MEDICATIONS,
    "change",
    "diabetesMed",
    "readmitted",
)
# What a prediction needs: everything but identifiers and the target.
FEATURE_INPUT_COLUMNS = tuple(c for c in COLUMNS if c not in (*ID_COLUMNS, TARGET_COLUMN))

RACES = ("Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other")
GENDERS = ("Female", "Male", "Unknown/Invalid")
AGE_BRACKETS = tuple(f"[{lo}-{lo + 10})" for lo in range(0, 100, 10))
WEIGHT_BRACKETS = tuple(f"[{lo}-{lo + 25})" for lo in range(0, 200, 25)) + (">200",)
MAX_GLU_SERUM_VALUES = (NOT_TAKEN, "Norm", ">200", ">300")
A1C_VALUES = (NOT_TAKEN, "Norm", ">7", ">8")
CHANGE_VALUES = ("No", "Ch")
DIABETES_MED_VALUES = ("No", "Yes")
PAYER_CODES = ("MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "OG", "PO", "DM", "CH", "WC", "OT", "MP", "SI", "FR")
MEDICAL_SPECIALTIES = (
    "InternalMedicine",
    "Emergency/Trauma",
    "Family/GeneralPractice",
    "Cardiology",
    "Surgery-General",
    "Nephrology",
    "Orthopedics",
    "Orthopedics-Reconstructive",
    "Radiologist",
    "Pulmonology",
    "Psychiatry",
    "Urology",
    "ObstetricsandGynecology",
    "Surgery-Cardiovascular/Thoracic",
    "Gastroenterology",
    "Surgery-Vascular",
    "Oncology",
)  # the common ones; any other specialty is accepted and grouped as "other"

# Code tables of IDs_mapping.csv, carried as the project's own constants.
ADMISSION_TYPES: dict[int, str] = {
    1: "Emergency",
    2: "Urgent",
    3: "Elective",
    4: "Newborn",
    5: "Not Available",
    6: "NULL",
    7: "Trauma Center",
    8: "Not Mapped",
}
DISCHARGE_DISPOSITIONS: dict[int, str] = {
    1: "Discharged to home",
    2: "Discharged/transferred to another short term hospital",
    3: "Discharged/transferred to SNF",
    4: "Discharged/transferred to ICF",
    5: "Discharged/transferred to another type of inpatient care institution",
    6: "Discharged/transferred to home with home health service",
    7: "Left AMA",
    8: "Discharged/transferred to home under care of Home IV provider",
    9: "Admitted as an inpatient to this hospital",
    10: "Neonate discharged to another hospital for neonatal aftercare",
    11: "Expired",
    12: "Still patient or expected to return for outpatient services",
    13: "Hospice / home",
    14: "Hospice / medical facility",
    15: "Discharged/transferred within this institution to Medicare approved swing bed",
    16: "Discharged/transferred/referred another institution for outpatient services",
    17: "Discharged/transferred/referred to this institution for outpatient services",
    18: "NULL",
    19: "Expired at home. Medicaid only, hospice.",
    20: "Expired in a medical facility. Medicaid only, hospice.",
    21: "Expired, place unknown. Medicaid only, hospice.",
    22: "Discharged/transferred to another rehab fac including rehab units of a hospital.",
    23: "Discharged/transferred to a long term care hospital.",
    24: "Discharged/transferred to a nursing facility certified under Medicaid but not certified under Medicare.",
    25: "Not Mapped",
    26: "Unknown/Invalid",
    27: "Discharged/transferred to a federal health care facility.",
    28: "Discharged/transferred/referred to a psychiatric hospital of psychiatric distinct part unit of a hospital",
    29: "Discharged/transferred to a Critical Access Hospital (CAH).",
    30: "Discharged/transferred to another Type of Health Care Institution not Defined Elsewhere",
}
ADMISSION_SOURCES: dict[int, str] = {
    1: "Physician Referral",
    2: "Clinic Referral",
    3: "HMO Referral",
    4: "Transfer from a hospital",
    5: "Transfer from a Skilled Nursing Facility (SNF)",
    6: "Transfer from another health care facility",
    7: "Emergency Room",
    8: "Court/Law Enforcement",
    9: "Not Available",
    10: "Transfer from critical access hospital",
    11: "Normal Delivery",
    12: "Premature Delivery",
    13: "Sick Baby",
    14: "Extramural Birth",
    15: "Not Available",
    17: "NULL",
    18: "Transfer From Another Home Health Agency",
    19: "Readmission to Same Home Health Agency",
    20: "Not Mapped",
    21: "Unknown/Invalid",
    22: "Transfer from hospital inpt/same fac reslt in a sep claim",
    23: "Born inside this hospital",
    24: "Born outside this hospital",
    25: "Transfer from Ambulatory Surgery Center",
    26: "Transfer from Hospice",
}

# Closed vocabularies of the categorical source columns (the missing marker aside).
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "race": RACES,
    "gender": GENDERS,
    "age": AGE_BRACKETS,
    "weight": WEIGHT_BRACKETS,
    "max_glu_serum": MAX_GLU_SERUM_VALUES,
    "A1Cresult": A1C_VALUES,
    "change": CHANGE_VALUES,
    "diabetesMed": DIABETES_MED_VALUES,
    **dict.fromkeys(MEDICATIONS, MEDICATION_STATUSES),
}

# ICD-9 groups of Strack et al. 2014, in the order the features list them.
DIAGNOSIS_GROUPS = (
    "circulatory",
    "respiratory",
    "digestive",
    "diabetes",
    "injury",
    "musculoskeletal",
    "genitourinary",
    "neoplasms",
    "other",
    "v_code",
    "e_code",
    "missing",
)
