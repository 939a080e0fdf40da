"""The read queries: batches raw and clean, the labelled encounters models train on, the bookkeeping.

Every read returns a DataFrame with its columns, even when empty: text as Python strings (None
when missing), numbers and times as pandas infers them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from readmission import schema
from readmission.split import SPLITS
from readmission.storage.tables import (
    CLEAN_SOURCE_COLUMNS,
    MYSQL_DIALECTS,
    RAW_SOURCE_COLUMNS,
    STORED,
    Databases,
    batch_log_table,
    diabetes_clean,
    diabetes_raw,
    predictions_table,
    quarantine_table,
)

IN_LIST_IDS = 5_000  # encounter ids per `IN (...)` list
LABELLED_COLUMNS = [*schema.COLUMNS, "split", "batch_number"]


def batch_log(db: Databases) -> pd.DataFrame:
    """Every batch's log row, by batch number."""
    return read(db.raw, sa.select(batch_log_table).order_by(batch_log_table.c.batch_number))


def predictions(db: Databases) -> pd.DataFrame:
    """Every stored prediction (batch, model version, probability, prediction, label), by batch and id."""
    table = predictions_table
    return read(db.clean, sa.select(table).order_by(table.c.batch_number, table.c.id))


def stored_batches(db: Databases) -> list[int]:
    """The batches whose raw and clean writes both completed (status `stored`), in order."""
    query = sa.select(batch_log_table.c.batch_number).where(batch_log_table.c.status == STORED)
    with db.raw.connect() as conn:
        return list(conn.execute(query.order_by(batch_log_table.c.batch_number)).scalars())


def quarantine(db: Databases, batch_number: int | None = None) -> pd.DataFrame:
    """The quarantined rows (of one batch, or all), in the order they were quarantined."""
    query = sa.select(quarantine_table).order_by(quarantine_table.c.id)
    if batch_number is not None:
        query = query.where(quarantine_table.c.batch_number == batch_number)
    return read(db.raw, query)


def read_raw_batch(db: Databases, batch_number: int) -> pd.DataFrame:
    """A batch's stored raw rows: the 50 source columns as text, in the order the batch brought them."""
    raw = diabetes_raw.c
    query = sa.select(*RAW_SOURCE_COLUMNS).where(raw.batch_number == batch_number).order_by(raw.row_in_batch)
    frame = read(db.raw, query)
    # As the data API client gives them: text or None, and encounter_id (a BIGINT) back as text.
    as_text = pd.Series([str(i) for i in frame["encounter_id"]], index=frame.index, dtype=object)
    return frame.assign(encounter_id=as_text)


def read_clean_batch(db: Databases, batch_number: int) -> pd.DataFrame:
    """A batch's clean rows (every `diabetes_clean` column: typed source columns, split, batch keys), in batch order."""
    clean = diabetes_clean.c
    query = sa.select(diabetes_clean).where(clean.batch_number == batch_number).order_by(clean.row_in_batch)
    return read(db.clean, query)


def labelled_encounters(db: Databases, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """The 50 typed source columns, `split` and `batch_number` of every clean encounter in `splits`.

    What models train and are tested on: the rows of `diabetes_clean`, by batch and in each
    batch's order, so the same stored rows always come in the same order.
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}: choose from {SPLITS}")
    clean = diabetes_clean.c
    query = sa.select(*CLEAN_SOURCE_COLUMNS, clean.split, clean.batch_number, clean.row_in_batch)
    if set(splits) != set(SPLITS):
        query = query.where(clean.split.in_(splits))
    rows = read(db.clean, query)
    if rows.empty:
        return pd.DataFrame(columns=LABELLED_COLUMNS, dtype=object)
    # Sorted here: an ORDER BY makes the server sort whole rows, which costs more.
    return rows.sort_values(["batch_number", "row_in_batch"], ignore_index=True)[LABELLED_COLUMNS]


def read(database: Engine, query: sa.Select) -> pd.DataFrame:
    """The result of `query` as a DataFrame with its columns, even when empty: text as Python strings
    (None when missing), numbers and times as pandas infers them."""
    with database.connect() as conn:
        result = conn.execute(query)
        # MySQL drivers return Python values SQLAlchemy leaves alone; their tuples skip the
        # construction of a Row per row, which costs more than the driver's own parsing.
        rows = result.cursor.fetchall() if conn.dialect.name in MYSQL_DIALECTS else result.fetchall()
        frame = pd.DataFrame(list(rows), columns=list(result.keys()), dtype=object)
    # Text stays as the driver's strings: pandas' own string columns would cost a conversion
    # each way, and every reader of text here wants Python strings.
    other = [column.name for column in query.selected_columns if not isinstance(column.type, sa.String)]
    frame[other] = frame[other].infer_objects()
    return frame


def chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def inlined_in(column: sa.Column, ids: list[int]) -> sa.ColumnElement[bool]:
    """`column IN (ids)` with the integers written into the SQL: thousands of bound parameters cost more."""
    return column.in_(sa.text(",".join(str(int(i)) for i in ids)))
