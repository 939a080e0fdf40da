"""Batch scoring of an uploaded CSV: read it, check each row, score the good ones, report the rest.

The API scores a batch all or nothing, so each row is checked here first with the API's
own request model (`readmission.serving.schemas.Encounter`, the one validation of the
project) and only valid rows are sent; the others are listed with the reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import TypeAdapter, ValidationError

from readmission import schema
from readmission.dataset import read_csv_text
from readmission.serving.schemas import FIELDS, RISK_BANDS, BatchPrediction, Encounter

ENCOUNTER_LIST: TypeAdapter[list[Encounter]] = TypeAdapter(list[Encounter])
PREDICTION_COLUMNS = ("probability", "risk_band", "prediction", "label")
GZIP_MAGIC = b"\x1f\x8b"


class BatchFileError(ValueError):
    """The file as a whole cannot be scored (not a CSV, no rows, columns missing, too many rows)."""


@dataclass(frozen=True)
class PreparedBatch:
    """An uploaded file split into rows the API will accept and rows it would reject."""

    frame: pd.DataFrame  # every uploaded row and column, as text
    encounters: list[dict]  # the valid rows as request bodies
    valid_rows: np.ndarray  # their positions in `frame`
    rejected: pd.DataFrame  # line, encounter_id (when the file has it), reason


def read_upload(content: bytes) -> pd.DataFrame:
    """An uploaded CSV (plain or gzipped) in the data set's format, as text (`?` and `None` stay values)."""
    if not content.strip():
        raise BatchFileError("The file is empty.")
    try:
        frame = read_csv_text(io.BytesIO(content), compression="gzip" if content[:2] == GZIP_MAGIC else None)
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as exc:
        raise BatchFileError(f"The file is not a readable CSV: {exc}") from None
    if frame.empty:
        raise BatchFileError("The file has a header but no rows.")
    return frame


def _json_column(column: str, text: pd.Series) -> np.ndarray:
    """A CSV column as the JSON values the request model expects: whole numbers for ids and counts.

    Anything else stays the text it is, for validation to name; blank cells become `None`.
    """
    values = text.to_numpy(dtype=object, na_value=None)
    spec = FIELDS[column]
    if spec.codes is not None or spec.count_range is not None:
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers))
        values[whole] = numbers[whole].astype(np.int64).astype(object)  # Python ints: the model is strict
    return values


def request_bodies(frame: pd.DataFrame) -> list[dict]:
    """Each row as a request body: the model's columns only (extra ones are ignored), blanks left out."""
    columns = [c for c in frame.columns if c in FIELDS]
    values = [_json_column(c, frame[c]) for c in columns]
    return [{c: v for c, v in zip(columns, row) if v is not None} for row in zip(*values)]


def _reasons(error: ValidationError, frame: pd.DataFrame) -> dict[int, str]:
    """Validation errors grouped by row: `column = 'value': message; ...`."""
    reasons: dict[int, list[str]] = {}
    for entry in error.errors(include_url=False, include_input=False):
        position, *where = entry["loc"]
        row = int(position)  # a list is validated: its errors start at the row's position
        column = ".".join(str(p) for p in where)
        value = frame.at[frame.index[row], column] if column in frame.columns else None
        shown = f"{column} = {value!r}" if value is not None and not pd.isna(value) else column
        reasons.setdefault(row, []).append(f"{shown}: {entry['msg']}")
    return {row: "; ".join(parts) for row, parts in reasons.items()}


def prepare_batch(frame: pd.DataFrame, max_rows: int) -> PreparedBatch:
    """Check every row with the request model; file-level problems raise `BatchFileError`."""
    if len(frame) > max_rows:
        raise BatchFileError(f"The file has {len(frame):,} rows; the prediction service scores at most "
                             f"{max_rows:,} per request. Split the file and upload the parts.")  # fmt: skip
    missing = [c for c, spec in FIELDS.items() if spec.required and c not in frame.columns]
    if missing:
        raise BatchFileError(f"The file lacks required columns: {', '.join(missing)}. Is it in the data set's format?")
    bodies = request_bodies(frame)
    try:
        ENCOUNTER_LIST.validate_python(bodies)
        reasons: dict[int, str] = {}
    except ValidationError as error:
        reasons = _reasons(error, frame)
    valid = np.array([i for i in range(len(bodies)) if i not in reasons], dtype=int)
    rejected_rows = sorted(reasons)
    rejected = pd.DataFrame({"line": [i + 2 for i in rejected_rows]})  # line 1 is the header
    if "encounter_id" in frame.columns:
        rejected["encounter_id"] = frame["encounter_id"].iloc[rejected_rows].to_numpy()
    rejected["reason"] = [reasons[i] for i in rejected_rows]
    return PreparedBatch(frame, [bodies[i] for i in valid], valid, rejected)


def scored_frame(prepared: PreparedBatch, answer: BatchPrediction) -> pd.DataFrame:
    """The scored rows as uploaded (every column kept), followed by the model's answer for each."""
    if answer.rows != len(prepared.valid_rows) or len(answer.predictions) != len(prepared.valid_rows):
        raise ValueError(f"the API scored {len(answer.predictions)} rows, {len(prepared.valid_rows)} were sent")
    ours = [c for c in ("line", *PREDICTION_COLUMNS) if c in prepared.frame.columns]  # an upload's own are replaced
    scored = prepared.frame.iloc[prepared.valid_rows].drop(columns=ours).reset_index(drop=True)
    scored.insert(0, "line", prepared.valid_rows + 2)
    answers = pd.DataFrame([p.model_dump() for p in answer.predictions], columns=list(PREDICTION_COLUMNS))
    return pd.concat([scored, answers], axis=1)


def band_counts(scored: pd.DataFrame) -> dict[str, int]:
    """How many scored rows fall in each risk band, low to high."""
    counts = scored["risk_band"].value_counts()
    return {band: int(counts.get(band, 0)) for band in RISK_BANDS}


def scored_csv(scored: pd.DataFrame) -> bytes:
    """The scored rows as a CSV (the data set's format plus the answer columns)."""
    return scored.to_csv(index=False).encode()


def identifying_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that tell rows apart for a reader: the ids the file carries, then age and diagnosis."""
    return [c for c in (*schema.ID_COLUMNS, "age", "diag_1") if c in frame.columns]
