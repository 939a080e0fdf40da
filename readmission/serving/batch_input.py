"""The body of a batch request (a JSON list or a CSV in the data set's format) -> the model's input.

Both formats are checked against the same field specs (`schemas.FIELDS`). JSON is decoded
and checked in one pass by a msgspec struct built from the specs; a body it refuses is checked
again by the pydantic `Encounter` model, whose verdict and errors are the API's (msgspec only
makes the common case, a valid batch, several times cheaper); the result is one object matrix in
`schema.FEATURE_INPUT_COLUMNS` order. CSV is read by Arrow as dictionary-encoded text and
checked by looking at each distinct cell text of a column once (a batch has few distinct values
per column); the result keeps the cells as positions in the accepted values
(`features.CodedEncounters`). Either way it is ready for a single model call, or the request
gets an error that names every offending row and field (the first `MAX_ERRORS` of them).
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from pydantic import Field, TypeAdapter, ValidationError

from readmission.features import CodedEncounters
from readmission.serving.schemas import (
    FIELDS,
    IGNORED_COLUMNS,
    IGNORED_FIELD_TYPES,
    INPUT_COUNT,
    MAX_TEXT_LENGTH,
    Encounter,
    FieldSpec,
    encounter_row,
)

MAX_ERRORS = 20  # a 10,000-row batch with a wrong column would otherwise answer 10,000 errors


class InvalidBatch(ValueError):
    """The batch is malformed; `errors` are FastAPI-style entries (loc, msg, type)."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(e["msg"] for e in errors[:3]))
        self.errors = errors


class BatchTooLarge(ValueError):
    """More encounters than `MAX_BATCH_ROWS`."""


def bounded(errors: list[dict[str, Any]], total: int | None = None) -> list[dict[str, Any]]:
    """The first `MAX_ERRORS` errors, with a last entry saying how many were left out."""
    total = len(errors) if total is None else total
    kept = errors[:MAX_ERRORS]
    if total > len(kept):
        kept.append({"loc": ["body"], "msg": f"... and {total - len(kept)} more errors", "type": "too_many_errors"})
    return kept


def validation_errors(error: ValidationError, prefix: tuple[str | int, ...] = ("body",)) -> list[dict[str, Any]]:
    """pydantic's errors as API errors: where, what, which kind; never the input echoed back."""
    entries = error.errors(include_url=False, include_input=False, include_context=False)
    return bounded([{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in entries[:MAX_ERRORS]],
                   error.error_count())  # fmt: skip


# --- JSON -------------------------------------------------------------------------------


@lru_cache
def _batch_adapter(max_rows: int) -> TypeAdapter:
    return TypeAdapter(Annotated[list[Encounter], Field(min_length=1, max_length=max_rows)])


def _msgspec_type(spec: FieldSpec) -> Any:
    """What `spec` accepts, as msgspec checks it (strict, like the pydantic model: no number in a string)."""
    if spec.vocabulary is not None:
        return Literal[spec.vocabulary]
    if spec.codes is not None:
        return Literal[tuple(spec.codes)]
    if spec.count_range is not None:
        return Annotated[int, msgspec.Meta(ge=spec.count_range[0], le=spec.count_range[1])]
    return Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LENGTH)]


def _field(position: int) -> str:
    return f"input_{position}"  # column names such as "glyburide-metformin" are not identifiers


def _msgspec_struct() -> type[msgspec.Struct]:
    """The `Encounter` model as a msgspec struct: input fields `input_<i>` named as the columns in JSON."""
    inputs = [(_field(i), _msgspec_type(spec)) if spec.required else (_field(i), _msgspec_type(spec), spec.default)
              for i, spec in enumerate(FIELDS.values())]  # fmt: skip
    ignored: list[tuple[str, Any] | tuple[str, Any, Any]] = [(column, kind, None) for column, kind in IGNORED_FIELD_TYPES.items()]
    return msgspec.defstruct("FastEncounter", inputs + ignored, kw_only=True, forbid_unknown_fields=True, gc=False,
                             rename={_field(i): column for i, column in enumerate(FIELDS)})  # fmt: skip


FAST_DECODER: msgspec.json.Decoder[list[Any]] = msgspec.json.Decoder(list[_msgspec_struct()])  # type: ignore[misc]
_input_values = attrgetter(*(_field(i) for i in range(INPUT_COUNT)))


def encounters_from_json(body: bytes, max_rows: int) -> np.ndarray:
    """A JSON list of encounters, validated in one pass from the raw bytes."""
    try:
        encounters = FAST_DECODER.decode(body)
    except msgspec.DecodeError:  # includes msgspec.ValidationError
        encounters = []
    if 1 <= len(encounters) <= max_rows:
        cells = chain.from_iterable(map(_input_values, encounters))  # row after row, flat: no tuple per row kept
        return np.fromiter(cells, dtype=object, count=len(encounters) * INPUT_COUNT).reshape(len(encounters), -1)
    return _explained(body, max_rows)


def _explained(body: bytes, max_rows: int) -> np.ndarray:
    """The pydantic verdict on a body the fast decoder refused: the API's errors (or, should they differ, its rows)."""
    try:
        encounters = _batch_adapter(max_rows).validate_json(body)
    except ValidationError as error:
        too_long = [e for e in error.errors(include_url=False) if e["type"] == "too_long" and e["loc"] == ()]
        if too_long:
            raise BatchTooLarge(f"{too_long[0]['ctx']['actual_length']} encounters in one request; the limit is "
                                f"{max_rows} (MAX_BATCH_ROWS): split the batch.") from None  # fmt: skip
        raise InvalidBatch(validation_errors(error)) from None
    return np.array([encounter_row(e) for e in encounters], dtype=object)


# --- CSV --------------------------------------------------------------------------------


def _error(row: int | None, column: str, message: str, kind: str) -> dict[str, Any]:
    loc: list[str | int] = ["body", column] if row is None else ["body", row, column]
    return {"loc": loc, "msg": message, "type": kind}


# Every column of the data set as dictionary-encoded text: each cell arrives as a position in its column's
# few distinct texts, so the reader never makes a Python object per cell.
_CSV_TEXT = pa.dictionary(pa.int32(), pa.string())
_CSV_READ = pa_csv.ReadOptions(use_threads=False, block_size=1 << 26)  # one block: a batch is at most a few MB
_QUOTED_ROW = re.compile(r"(Expected \d+ columns, got \d+): .*", re.DOTALL)
_CSV_CONVERT = pa_csv.ConvertOptions(column_types={c: _CSV_TEXT for c in (*FIELDS, *IGNORED_COLUMNS)},
                                     null_values=[""], strings_can_be_null=True)  # fmt: skip


def _read_csv(body: bytes) -> pa.Table:
    """The CSV as dictionary-encoded text cells (an empty cell is missing), or an error saying what is wrong."""
    try:
        return pa_csv.read_csv(pa.py_buffer(body), read_options=_CSV_READ, convert_options=_CSV_CONVERT)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        reason = _QUOTED_ROW.sub(r"\1", str(exc))  # Arrow quotes the row: patient data must not come back in errors
        raise InvalidBatch([{"loc": ["body"], "msg": f"not a CSV in the data set's format: {reason}",
                             "type": "csv_invalid"}]) from None  # fmt: skip


def _column_cells(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's position in the column's distinct texts (-1: empty), and those texts."""
    cells = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    positions = cells.indices.fill_null(-1) if cells.null_count else cells.indices
    return positions.to_numpy(), cells.dictionary.to_numpy(zero_copy_only=False)


def _accepted(spec: FieldSpec, distinct: np.ndarray, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which distinct cell texts `spec` accepts, and the model input value of each."""
    if spec.vocabulary is not None:
        allowed = set(spec.vocabulary)
        return np.fromiter((v in allowed for v in distinct), bool, len(distinct)), distinct
    if spec.codes is None and spec.count_range is None:
        return np.fromiter((len(v) <= MAX_TEXT_LENGTH for v in distinct), bool, len(distinct)), distinct
    whole = np.isfinite(numbers) & (numbers == np.round(numbers))
    if spec.codes is not None:
        valid = whole & np.isin(numbers, list(spec.codes))
    else:
        assert spec.count_range is not None
        low, high = spec.count_range
        valid = whole & (numbers >= low) & (numbers <= high)
    return valid, np.where(valid, numbers, 0).astype(np.int64).astype(object)


def _cell_errors(refused: np.ndarray, texts: np.ndarray) -> list[dict[str, Any]]:
    """An error for each refused cell (`refused`: columns x rows; `texts`: each cell's text, None when empty)."""
    errors: list[dict[str, Any]] = []
    for column_at, row in zip(*np.nonzero(refused)):  # column after column
        if len(errors) == MAX_ERRORS:
            break
        column, spec, text = list(FIELDS)[column_at], list(FIELDS.values())[column_at], texts[column_at, row]
        problem = "required value is missing" if text is None else f"{text!r} is not allowed"
        errors.append(_error(int(row), column, f"{problem} (CSV line {row + 2}): expected {spec.allowed_text()}",
                             "value_error"))  # fmt: skip
    return bounded(errors, int(refused.sum()))


def encounters_from_csv(body: bytes, max_rows: int) -> CodedEncounters:
    """A CSV in the data set's format (header row; extra data-set columns such as `readmitted` are ignored).

    Every distinct cell text of a column is checked once (a column holds a handful of distinct
    values), and the verdicts are looked up for each cell; the result keeps the cells as
    positions in the accepted values, so no Python object is made per cell.
    """
    table = _read_csv(body)
    if table.num_rows > max_rows:
        raise BatchTooLarge(f"{table.num_rows} encounters in one request; the limit is {max_rows} (MAX_BATCH_ROWS): "
                            "split the batch.")  # fmt: skip
    if table.num_rows == 0:
        raise InvalidBatch([{"loc": ["body"], "msg": "the CSV holds no encounters", "type": "too_short"}])
    names = table.column_names
    unknown = [c for c in names if c not in FIELDS and c not in IGNORED_COLUMNS]
    repeated = sorted({c for c in names if names.count(c) > 1})
    missing = [c for c, spec in FIELDS.items() if spec.required and c not in names]
    errors = [_error(None, c, f"unknown column {c!r}", "extra_forbidden") for c in unknown]
    errors += [_error(None, c, f"column {c!r} appears more than once", "csv_invalid") for c in repeated]
    errors += [_error(None, c, f"required column {c!r} is missing", "missing") for c in missing]
    if errors:
        raise InvalidBatch(bounded(errors))

    absent = (np.full(table.num_rows, -1), np.array([], dtype=object))
    cells, texts = zip(*(_column_cells(table.column(c)) if c in names else absent for c in FIELDS))
    # Each column's distinct texts, then its default (where its empty cells point), all in one list.
    sizes = np.array([len(t) + 1 for t in texts])
    offsets = np.cumsum(sizes) - sizes
    numbers = np.split(pd.to_numeric(np.concatenate(texts), errors="coerce").astype(float),  # one call for all
                       np.cumsum(sizes - 1)[:-1])  # fmt: skip
    specs = FIELDS.values()
    verdicts = [_accepted(spec, t, n) for spec, t, n in zip(specs, texts, numbers)]
    valid = np.concatenate([part for (ok, _), spec in zip(verdicts, specs) for part in (ok, [not spec.required])])
    values = np.concatenate([part for (_, accepted), spec in zip(verdicts, specs)
                             for part in (accepted, np.array([spec.default], dtype=object))])  # fmt: skip
    cells = np.stack(cells)
    codes = np.where(cells < 0, sizes[:, None] - 1, cells) + offsets[:, None]
    refused = ~valid[codes]
    if refused.any():
        everything = np.concatenate([part for t in texts for part in (t, np.array([None]))])
        raise InvalidBatch(_cell_errors(refused, everything[codes]))
    return CodedEncounters(codes, values)
