"""The write protocol: every write of a batch is atomic and replaces what the batch wrote before.

A batch's `batch_log` row always adds up: `rows_received = rows_stored + rows_rejected`, and
`rows_rejected` is the number of the batch's quarantine rows. Its status is `raw_stored`
after `write_raw` (rows_stored counts raw rows) and `stored` after `write_clean` (clean rows).
The bookkeeping (batch_log, quarantine) sits next to the raw rows because the raw write already
decides the first quarantined rows (ids that cannot be keyed, ids another batch holds): rows,
quarantine and log change in ONE transaction.

Every write first deletes what the same batch wrote before, then inserts, in one transaction:
writing a batch again leaves every table as after the first write (only the timestamps, in UTC,
and the quarantine's surrogate ids move). An encounter id that another batch already holds is
quarantined, never duplicated and never taken from that batch.

Two databases cannot share a transaction, so `write_clean` commits the clean rows first and the
bookkeeping (quarantine, batch_log) second. If the second commit fails, the clean rows are there
but the batch still reads `raw_stored`: visibly unfinished, and writing it again replaces the
clean rows. The other order could leave a batch logged as `stored` without its clean rows.
`write_batch` does both writes with the same order of commits (raw, clean, bookkeeping), but
inserts the raw and the clean rows at the same time.

Inserts go `chunk_rows` rows per statement: on SQLite through the driver's executemany, on
MySQL through `storage.mysql_loader`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from readmission import schema
from readmission.clean import CLEAN_COLUMNS
from readmission.storage.mysql_loader import insert_mysql
from readmission.storage.reads import IN_LIST_IDS, chunks, inlined_in
from readmission.storage.tables import (
    MYSQL_DIALECTS,
    RAW_STORED,
    STORED,
    Databases,
    StorageError,
    batch_log_table,
    diabetes_clean,
    diabetes_raw,
    predictions_table,
    quarantine_table,
)
from readmission.validation import encounter_ids, key_problems, validate_columns

RAW_STAGE, CLEAN_STAGE = "raw", "clean"  # which write quarantined a row


@dataclass(frozen=True)
class BatchCounts:
    """What a write did to a batch: rows received, stored (raw or clean) and rejected (quarantined)."""

    batch_number: int
    received: int
    stored: int
    rejected: int


@dataclass(frozen=True)
class RawWrite(BatchCounts):
    """A raw write's counts and the rows it stored (as text), which the next stage validates and cleans."""

    rows: pd.DataFrame = field(repr=False, compare=False)


@dataclass(frozen=True)
class BatchWrite:
    """What `write_batch` did: the raw write, and the batch's final counts."""

    raw: RawWrite
    final: BatchCounts


# What `write_batch` cleans the stored raw rows with: (clean rows, quarantined rows with a `reason`).
Cleaner = Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]


@dataclass(frozen=True)
class _RawPlan:
    """A batch about to be stored raw: its rows as text and why each is not stored ("" when it is)."""

    batch_number: int
    rows: pd.DataFrame
    reasons: pd.Series
    started: datetime
    checksum: str

    @property
    def stored(self) -> np.ndarray:
        return (self.reasons == "").to_numpy(dtype=bool)

    def stored_rows(self) -> pd.DataFrame:
        return self.rows[self.stored].reset_index(drop=True)

    def positions(self) -> pd.Series:
        """The position in the batch (`row_in_batch`) of each stored row, by encounter id."""
        kept = self.stored
        return pd.Series(np.flatnonzero(kept), index=encounter_ids(self.rows)[kept].astype("int64").to_numpy())


def write_raw(db: Databases, batch_number: int, frame: pd.DataFrame, source: str) -> RawWrite:
    """Store a batch's rows as they came, in one transaction, replacing what the batch stored before.

    Rows whose encounter_id cannot be keyed (missing, not a whole number, repeated in the
    batch) or is already held by another batch go to the quarantine with the reason. Raises
    SchemaError (nothing written) when the columns are not the 50 source columns.
    """
    rows = _source_rows(frame)
    with db.raw.begin() as conn:
        return _insert_raw(db, conn, _plan_raw(conn, batch_number, rows), source)


def write_clean(db: Databases, batch_number: int, clean_frame: pd.DataFrame, quarantined: pd.DataFrame) -> BatchCounts:
    """Store a batch's clean rows, then its quarantined rows and final counts (see the module docstring).

    `clean_frame` holds `clean.CLEAN_COLUMNS`; `quarantined` the raw columns and a `reason`.
    Together they must account for every raw row of the batch, else StorageError and nothing is written.
    """
    received, positions = _raw_positions(db, batch_number)
    if received is None:
        raise StorageError(f"batch {batch_number} has no raw write: store its raw rows first")
    _check_clean(batch_number, clean_frame, quarantined, len(positions))
    with db.clean.begin() as conn:
        _insert_clean(db, conn, batch_number, clean_frame, positions)
    return _finish(db, batch_number, received, clean_frame, quarantined)


def write_batch(db: Databases, batch_number: int, frame: pd.DataFrame, source: str, clean: Cleaner) -> BatchWrite:
    """`write_raw`, then `write_clean` of `clean(rows stored raw)`, with both databases written at once.

    The outcome and the guarantees are those of the two calls in sequence: the raw transaction
    commits first, then the clean one, then the bookkeeping, and a failure before the raw commit
    writes nothing. Only faster: the raw rows are inserted (by a worker thread) while the batch is
    cleaned and its clean rows inserted, so both databases work at the same time.
    """
    rows = _source_rows(frame)
    with db.clean.begin() as clean_conn, db.raw.begin() as raw_conn:  # leaving: raw commits, then clean
        plan = _plan_raw(raw_conn, batch_number, rows)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-writer") as worker:
            raw_written = worker.submit(_insert_raw, db, raw_conn, plan, source)
            clean_frame, quarantined = clean(plan.stored_rows())
            _check_clean(batch_number, clean_frame, quarantined, int(plan.stored.sum()))
            _insert_clean(db, clean_conn, batch_number, clean_frame, plan.positions())
            raw = raw_written.result()
    return BatchWrite(raw, _finish(db, batch_number, raw.received, clean_frame, quarantined))


def write_predictions(
    db: Databases, batch_number: int, model_name: str, model_version: str, predictions: pd.DataFrame
) -> int:
    """Store one model version's predictions for a batch (encounter_id, probability, prediction, label),
    replacing what that version stored for the batch before, in one transaction; the rows written."""
    table = predictions_table
    constants = {"batch_number": batch_number, "model_name": model_name, "model_version": model_version}
    columns = ["encounter_id", "probability", "prediction", "label"]
    this_version = (table.c.batch_number == batch_number) & (table.c.model_version == model_version)
    with db.clean.begin() as conn:
        conn.execute(sa.delete(table).where(this_version))
        insert(conn, table, predictions[columns], constants | {"scored_at": now()}, db.chunk_rows)
    return len(predictions)


def _plan_raw(conn: Connection, batch_number: int, rows: pd.DataFrame) -> _RawPlan:
    """Delete what the batch stored before and decide which rows to store (in the raw transaction)."""
    started, checksum = now(), batch_checksum(rows)
    conn.execute(sa.delete(diabetes_raw).where(diabetes_raw.c.batch_number == batch_number))
    conn.execute(sa.delete(quarantine_table).where(quarantine_table.c.batch_number == batch_number))
    return _RawPlan(batch_number, rows, _raw_problems(conn, rows), started, checksum)


def _insert_raw(db: Databases, conn: Connection, plan: _RawPlan, source: str) -> RawWrite:
    """Insert the planned rows, the quarantined ones and the batch's log row (status raw_stored)."""
    kept, number = plan.stored, plan.batch_number
    stored = plan.rows[kept].assign(encounter_id=encounter_ids(plan.rows)[kept], row_in_batch=np.flatnonzero(kept))
    insert(conn, diabetes_raw, stored, {"batch_number": number, "ingested_at": plan.started}, db.chunk_rows)
    rejected = _quarantine_rows(plan.rows[~kept], plan.reasons[~kept], RAW_STAGE)
    insert(conn, quarantine_table, rejected, {"batch_number": number}, db.chunk_rows)
    conn.execute(sa.delete(batch_log_table).where(batch_log_table.c.batch_number == number))
    log = {
        "batch_number": number,
        "source": source,
        "rows_received": len(plan.rows),
        "rows_stored": len(stored),
        "rows_rejected": len(rejected),
        "checksum": plan.checksum,
        "status": RAW_STORED,
        "started_at": plan.started,
    }
    conn.execute(sa.insert(batch_log_table).values(**log))
    return RawWrite(number, len(plan.rows), len(stored), len(rejected), rows=plan.stored_rows())


def _insert_clean(
    db: Databases, conn: Connection, batch_number: int, clean_frame: pd.DataFrame, positions: pd.Series
) -> None:
    """Replace the batch's clean rows (in the clean transaction), each at its raw row's position in the batch."""
    rows = clean_frame[list(CLEAN_COLUMNS)]
    row_in_batch = rows["encounter_id"].astype("int64").map(positions)
    if row_in_batch.isna().any():
        unknown = rows.loc[row_in_batch.isna(), "encounter_id"].head(5).tolist()
        raise StorageError(f"batch {batch_number}: clean rows for encounters it did not store raw: {unknown}")
    conn.execute(sa.delete(diabetes_clean).where(diabetes_clean.c.batch_number == batch_number))
    rows = rows.assign(row_in_batch=row_in_batch.astype("int64"))
    insert(conn, diabetes_clean, rows, {"batch_number": batch_number}, db.chunk_rows)


def _finish(
    db: Databases, batch_number: int, received: int, clean_frame: pd.DataFrame, quarantined: pd.DataFrame
) -> BatchCounts:
    """Store the clean stage's quarantined rows and the batch's final counts (the bookkeeping transaction)."""
    this_batch = quarantine_table.c.batch_number == batch_number
    with db.raw.begin() as conn:
        conn.execute(sa.delete(quarantine_table).where(this_batch, quarantine_table.c.stage == CLEAN_STAGE))
        if len(quarantined):
            rejected = _quarantine_rows(quarantined, quarantined["reason"], CLEAN_STAGE)
            insert(conn, quarantine_table, rejected, {"batch_number": batch_number}, db.chunk_rows)
        all_rejected = conn.execute(sa.select(sa.func.count()).where(this_batch)).scalar()
        counts = {"rows_stored": len(clean_frame), "rows_rejected": all_rejected, "status": STORED}
        conn.execute(
            sa.update(batch_log_table)
            .where(batch_log_table.c.batch_number == batch_number)
            .values(**counts, finished_at=now())
        )
    return BatchCounts(batch_number, received, len(clean_frame), all_rejected)


def _raw_positions(db: Databases, batch_number: int) -> tuple[int | None, pd.Series]:
    """(rows received as logged, or None without a raw write; the position of each raw row by encounter id)."""
    raw = diabetes_raw.c
    with db.raw.connect() as conn:
        received = conn.execute(
            sa.select(batch_log_table.c.rows_received).where(batch_log_table.c.batch_number == batch_number)
        ).scalar()
        stored = conn.execute(sa.select(raw.encounter_id, raw.row_in_batch).where(raw.batch_number == batch_number))
        pairs = stored.tuples().all()
    return received, pd.Series([p for _, p in pairs], index=[int(i) for i, _ in pairs], dtype="int64")


def _source_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The batch's 50 source columns as text, in order (SchemaError when its columns are not those)."""
    validate_columns(frame)
    return frame[list(schema.COLUMNS)].astype("string").reset_index(drop=True)


def _check_clean(batch_number: int, clean_frame: pd.DataFrame, quarantined: pd.DataFrame, raw_rows: int) -> None:
    """Raise StorageError unless the clean rows have their columns and, with the quarantined ones, make the raw rows."""
    missing = [c for c in CLEAN_COLUMNS if c not in clean_frame.columns]
    if missing:
        raise StorageError(f"batch {batch_number}: the clean rows lack the columns {missing}")
    if len(clean_frame) + len(quarantined) != raw_rows:
        raise StorageError(
            f"batch {batch_number}: {len(clean_frame)} clean and {len(quarantined)} quarantined "
            f"rows do not account for its {raw_rows} raw rows"
        )


def _raw_problems(conn: Connection, rows: pd.DataFrame) -> pd.Series:
    """Why each row cannot be stored raw ("" when it can): its key, or an encounter_id another batch holds.

    Call it once the batch's own earlier rows are deleted, in the transaction that stores the rows.
    """
    reasons = key_problems(rows)
    keyed = encounter_ids(rows)[reasons == ""]
    owners = keyed.map(_owners(conn, keyed)).dropna()
    held_by = owners.astype("int64").astype("string")
    reasons[owners.index] = (
        "encounter_id '" + rows.loc[owners.index, "encounter_id"] + "' is already stored by batch " + held_by
    )
    return reasons


def _owners(conn: Connection, ids: pd.Series) -> dict[int, int]:
    """{encounter_id: batch_number} of the given ids that diabetes_raw holds."""
    owners: dict[int, int] = {}
    raw = diabetes_raw.c
    for chunk in chunks(ids.astype("int64").tolist(), IN_LIST_IDS):
        query = sa.select(raw.encounter_id, raw.batch_number).where(inlined_in(raw.encounter_id, chunk))
        owners.update(conn.execute(query).tuples().all())
    return owners


def batch_checksum(rows: pd.DataFrame) -> str:
    """SHA-256 of a batch's content: the header and every row of the source columns, missing cells as \\N."""
    cells = [pc.fill_null(pa.array(rows[c].astype("string"), type=pa.string()), "\\N") for c in schema.COLUMNS]
    lines = pc.binary_join_element_wise(*cells, "\x1f").to_pylist() if len(rows) else []
    return hashlib.sha256("\x1e".join(["\x1f".join(schema.COLUMNS), *lines]).encode()).hexdigest()


def _quarantine_rows(rows: pd.DataFrame, reasons: pd.Series, stage: str) -> pd.DataFrame:
    """Quarantine rows for `rows`: stage, encounter_id as it came, reason, and the source columns as JSON."""
    if rows.empty:
        return pd.DataFrame(columns=["stage", "encounter_id", "reason", "raw_row"])
    source = rows[list(schema.COLUMNS)].astype("string").astype(object)
    source = source.where(source.notna(), None)
    as_json = [json.dumps(dict(zip(schema.COLUMNS, row, strict=True))) for row in source.itertuples(index=False)]
    return pd.DataFrame(
        {
            "stage": stage,
            "encounter_id": source["encounter_id"].to_numpy(),
            "reason": reasons.astype(object).to_numpy(),
            "raw_row": as_json,
        }
    )


def insert(conn: Connection, table: sa.Table, frame: pd.DataFrame, constants: dict[str, Any], chunk_rows: int) -> None:
    """Insert `frame`'s rows, each with the same `constants`, `chunk_rows` rows per statement."""
    if frame.empty:
        return
    if conn.dialect.name in MYSQL_DIALECTS:
        insert_mysql(conn, table, frame, constants, chunk_rows)
        return
    if conn.dialect.paramstyle != "qmark":
        raise StorageError(f"unsupported database {conn.dialect.name}: use SQLite or MySQL/MariaDB")
    # SQLite: plain tuples through the driver's executemany, in C; SQLAlchemy's per-row parameter
    # processing would cost ten times the insert itself.
    values = frame.astype(object)
    missing = frame.isna().to_numpy()
    if missing.any():
        values = values.mask(missing, None)  # DB-API wants None, not NaN or <NA>
    constant = tuple(_bind(table.c[name], value, conn) for name, value in constants.items())
    rows = [(*row, *constant) for row in values.to_numpy().tolist()]
    columns = [*frame.columns, *constants]
    quote = conn.dialect.identifier_preparer.quote
    statement = (
        f"INSERT INTO {quote(table.name)} ({','.join(map(quote, columns))}) VALUES ({','.join('?' * len(columns))})"
    )
    for start in range(0, len(rows), chunk_rows):
        conn.exec_driver_sql(statement, rows[start : start + chunk_rows])


def _bind(column: sa.Column, value: Any, conn: Connection) -> Any:
    """`value` as the driver takes it for `column` (e.g. a datetime in SQLAlchemy's SQLite text format)."""
    processor = column.type.bind_processor(conn.dialect)
    return processor(value) if processor else value


def now() -> datetime:
    """Now in UTC, to the second (what every backend's DATETIME keeps alike)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)
