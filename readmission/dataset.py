"""Reading the UCI CSV exactly as it is, and writing a synthetic look-alike.

The file is read as text: every value stays the string it is in the file (`?` stays
`?`, `None` stays `None`), and only an empty cell becomes a missing value (`None`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import requests

from readmission import encounter_columns


class DatasetError(RuntimeError):
    """The data set could not be read, or is not the UCI diabetes CSV."""


def _is_url(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def _open_bytes(location: str, timeout: float = 60.0) -> bytes:
    """The file's bytes, from a local path or an http(s) URL."""
    if _is_url(location):
        try:
            response = requests.get(location, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise DatasetError(f"cannot download the data set from {location}: {exc}") from exc
        return response.content
    path = Path(location).expanduser()
    if not path.is_file():
        raise DatasetError(f"data set not found: {path}")
    return path.read_bytes()


def _csv_stream(location: str, content: bytes) -> tuple[io.BytesIO, str | None]:
    """A stream over the CSV and its compression, unwrapping the UCI .zip archive."""
    if content[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = [n for n in archive.namelist() if n.endswith("diabetic_data.csv")]
            if not names:
                raise DatasetError(f"{location}: the archive holds no diabetic_data.csv")
            return io.BytesIO(archive.read(names[0])), None
    compression = "gzip" if content[:2] == b"\x1f\x8b" else None
    return io.BytesIO(content), compression


def read_csv_text(source: str | Path | io.IOBase, *, compression: str | None = "infer", chunksize: int | None = None):
    """Read a CSV in the data set's format as text: the only missing value is an empty cell."""
    return pd.read_csv(
        source,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        compression=compression,
        chunksize=chunksize,
    )


def _check_columns(frame: pd.DataFrame, location: str) -> None:
    missing = [c for c in encounter_columns.COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"{location} is not the UCI diabetes CSV: missing columns {missing}")


def iter_dataset_chunks(location: str, rows: int) -> Iterator[pd.DataFrame]:
    """The data set in file order, `rows` rows at a time, never all in memory at once."""
    stream, compression = _csv_stream(location, _open_bytes(str(location)))
    with read_csv_text(stream, compression=compression, chunksize=rows) as reader:
        for chunk in reader:
            _check_columns(chunk, str(location))
            yield chunk[list(encounter_columns.COLUMNS)].reset_index(drop=True)


def load_dataset(location: str | Path) -> pd.DataFrame:
    """The whole data set as a text DataFrame with the 50 source columns in order."""
    stream, compression = _csv_stream(str(location), _open_bytes(str(location)))
    frame = read_csv_text(stream, compression=compression)
    _check_columns(frame, str(location))
    return frame[list(encounter_columns.COLUMNS)]


# --- synthetic data ---------------------------------------------------------------------


def _icd9_codes(rng: np.random.Generator, n: int, risk: np.ndarray) -> np.ndarray:
    """ICD-9 codes across all groups, V/E codes and `?`; circulatory codes track risk."""
    pools = [
        [f"{c}" for c in range(390, 460, 3)] + ["785"],  # circulatory
        [f"{c}" for c in range(460, 520, 4)] + ["786"],  # respiratory
        [f"{c}" for c in range(520, 580, 5)] + ["787"],  # digestive
        ["250", "250.01", "250.02", "250.4", "250.6", "250.83"],  # diabetes
        [f"{c}" for c in range(800, 1000, 17)],  # injury
        [f"{c}" for c in range(710, 740, 3)],  # musculoskeletal
        [f"{c}" for c in range(580, 630, 5)] + ["788"],  # genitourinary
        [f"{c}" for c in range(140, 240, 9)],  # neoplasms
        ["276", "278", "285", "296", "305", "345", "682", "707", "780", "038"],  # other
        ["V45", "V57", "V58", "V43", "V15"],
        ["E878", "E885", "E888", "E909", "E932"],
        [encounter_columns.MISSING],
    ]
    base = np.array([0.30, 0.14, 0.09, 0.08, 0.07, 0.05, 0.05, 0.04, 0.20, 0.02, 0.01, 0.02])
    group = np.where(rng.random(n) < 0.25 * risk, 0, rng.choice(len(pools), size=n, p=base / base.sum()))
    return np.array([pools[g][rng.integers(len(pools[g]))] for g in group], dtype=object)


def synthetic_dataset(rows: int = 3_000, seed: int = 0, patients: int | None = None) -> pd.DataFrame:
    """A text DataFrame shaped like the UCI file, with repeat patients and a planted signal.

    Readmission risk rises with prior inpatient visits, age, time in hospital, insulin
    changes and circulatory diagnoses, so a model trained on it beats chance clearly.
    """
    rng = np.random.default_rng(seed)
    patients = patients or max(1, int(rows * 0.7))
    patient_ids = rng.integers(100_000, 99_999_999, size=patients)
    patient_nbr = patient_ids[rng.integers(patients, size=rows)]
    inpatient = rng.poisson(0.6, rows)
    emergency = rng.poisson(0.2, rows)
    outpatient = rng.poisson(0.35, rows)
    age_index = np.clip(rng.normal(6.5, 1.6, rows).round().astype(int), 0, 9)
    stay = np.clip(rng.poisson(4.0, rows), 1, 14)
    insulin = rng.choice(encounter_columns.MEDICATION_STATUSES, size=rows, p=[0.46, 0.30, 0.12, 0.12])
    risk_score = (
        1.0 * np.minimum(inpatient, 4)
        + 0.5 * np.minimum(emergency, 3)
        + 0.25 * (age_index - 6)
        + 0.12 * (stay - 4)
        + 0.8 * np.isin(insulin, ["Up", "Down"])
        - 1.0
    )
    probability = 1.0 / (1.0 + np.exp(-risk_score))
    diag = [_icd9_codes(rng, rows, probability) for _ in range(3)]
    readmitted = np.where(rng.random(rows) < probability, np.where(rng.random(rows) < 0.25, "<30", ">30"), "NO")

    def pick(values, p=None):
        return rng.choice(np.asarray(values, dtype=object), size=rows, p=p)

    frame = pd.DataFrame(
        {
            "encounter_id": (rng.permutation(rows * 3)[:rows] + 10_000).astype(str),
            "patient_nbr": patient_nbr.astype(str),
            "race": pick([*encounter_columns.RACES, encounter_columns.MISSING], [0.74, 0.19, 0.02, 0.01, 0.02, 0.02]),
            "gender": pick(["Female", "Male", "Unknown/Invalid"], [0.535, 0.4645, 0.0005]),
            "age": np.asarray(encounter_columns.AGE_BRACKETS, dtype=object)[age_index],
            "weight": pick(
                [encounter_columns.MISSING, "[50-75)", "[75-100)", "[100-125)", ">200"],
                [0.96, 0.01, 0.015, 0.01, 0.005],
            ),
            "admission_type_id": pick(["1", "2", "3", "5", "6", "8"], [0.53, 0.18, 0.19, 0.05, 0.04, 0.01]),
            "discharge_disposition_id": pick(
                ["1", "3", "6", "18", "2", "22", "11", "25"], [0.6, 0.14, 0.12, 0.04, 0.03, 0.03, 0.02, 0.02]
            ),
            "admission_source_id": pick(["7", "1", "17", "4", "6", "2"], [0.56, 0.29, 0.07, 0.03, 0.03, 0.02]),
            "time_in_hospital": stay.astype(str),
            "payer_code": pick([encounter_columns.MISSING, "MC", "HM", "SP", "BC"], [0.4, 0.32, 0.1, 0.1, 0.08]),
            "medical_specialty": pick(
                [encounter_columns.MISSING, "InternalMedicine", "Emergency/Trauma", "Cardiology", "Hematology"],
                [0.49, 0.2, 0.15, 0.1, 0.06],
            ),
            "num_lab_procedures": np.clip(rng.normal(43, 19, rows).round(), 1, 132).astype(int).astype(str),
            "num_procedures": rng.integers(0, 7, rows).astype(str),
            "num_medications": np.clip(rng.normal(16, 8, rows).round(), 1, 81).astype(int).astype(str),
            "number_outpatient": outpatient.astype(str),
            "number_emergency": emergency.astype(str),
            "number_inpatient": inpatient.astype(str),
            "diag_1": diag[0],
            "diag_2": diag[1],
            "diag_3": diag[2],
            "number_diagnoses": np.clip(rng.normal(7.4, 1.9, rows).round(), 1, 16).astype(int).astype(str),
            "max_glu_serum": pick(encounter_columns.MAX_GLU_SERUM_VALUES, [0.95, 0.025, 0.015, 0.01]),
            "A1Cresult": pick(encounter_columns.A1C_VALUES, [0.83, 0.05, 0.04, 0.08]),
            **{
                med: pick(encounter_columns.MEDICATION_STATUSES, [0.85, 0.13, 0.01, 0.01])
                for med in encounter_columns.MEDICATIONS
            },
            "change": pick(encounter_columns.CHANGE_VALUES, [0.54, 0.46]),
            "diabetesMed": pick(encounter_columns.DIABETES_MED_VALUES, [0.23, 0.77]),
            "readmitted": readmitted,
        }
    )
    frame["insulin"] = insulin
    return frame[list(encounter_columns.COLUMNS)]


def write_synthetic_csv(path: str | Path, rows: int = 3_000, seed: int = 0) -> Path:
    """Write a synthetic data set file (gzip when the name ends in .gz) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_dataset(rows, seed).to_csv(path, index=False, compression="infer")
    return path
