"""Raw and clean storage (SQLAlchemy Core): two databases, and every write of a batch is atomic.

Where the tables live:

* `raw_data_db`: `diabetes_raw` (the 50 source columns as the text they came as, except
  `encounter_id`, the BIGINT primary key; plus `batch_number`, `row_in_batch` and
  `ingested_at`), `batch_log` (one row per batch) and `quarantine` (the rows that were not
  stored or not cleaned, with the stage, the reason and the row as JSON). The bookkeeping sits
  next to the raw rows because the raw write already decides the first quarantined rows (ids
  that cannot be keyed, ids another batch holds): rows, quarantine and log change in ONE transaction.
* `clean_data_db`: `diabetes_clean` (the `EncounterFeatures` columns as floats, the targets,
  the ids, `batch_number` and `split`), the views `train_data` / `validation_data` /
  `test_data`, and `predictions` (filled later by the pipeline).

A batch's `batch_log` row always adds up: `rows_received = rows_stored + rows_rejected`, and
`rows_rejected` is the number of the batch's quarantine rows. Its status is `raw_stored`
after `write_raw` (rows_stored counts raw rows) and `stored` after `write_clean` (clean rows).

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

Inserts go `chunk_rows` rows per statement (and at most `MAX_STATEMENT_CHARS`), below MySQL's
`max_allowed_packet`. On MySQL the values are rendered by Arrow, not by pymysql's per-value
escaping, which costs seconds per 15,000-row batch, and sent as files (LOAD DATA LOCAL INFILE)
where the server allows it (see `_insert_mysql`). SQLite and MySQL
(MariaDB) are the supported databases, MySQL through PyMySQL (`mysql+pymysql://`) or mysqlclient
(`mysql+mysqldb://`, what the DAG uses: it parses results in C and reads rows four times faster).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from readmission import encounter_columns
from readmission.clean import TARGET_COLUMNS, clean_columns, feature_columns
from readmission.config import Settings
from readmission.split import SPLITS
from readmission.validation import encounter_ids, key_problems, validate_columns

RAW_STORED, STORED = "raw_stored", "stored"  # batch_log statuses
RAW_STAGE, CLEAN_STAGE = "raw", "clean"  # which write quarantined a row
SPLIT_VIEWS = {split: f"{split}_data" for split in SPLITS}
IN_LIST_IDS = 5_000  # encounter ids per `IN (...)` list
MAX_STATEMENT_CHARS = 1_000_000  # per INSERT; MySQL's max_allowed_packet is at least 4 MiB by default (64 MiB in 8.0)
DEFAULT_CHUNK_ROWS: int = Settings.model_fields["insert_chunk_rows"].default

_MYSQL = ("mysql", "mariadb")
_LOCAL_FILES = "readmission_local_files"  # connection info key: the server takes LOAD DATA LOCAL INFILE
_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
_LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")  # MySQL's TEXT stops at 64 KB

raw_metadata = sa.MetaData()
clean_metadata = sa.MetaData()

diabetes_raw = sa.Table(
    "diabetes_raw", raw_metadata,
    sa.Column("encounter_id", sa.BigInteger, primary_key=True, autoincrement=False),
    *(sa.Column(name, _LONG_TEXT) for name in encounter_columns.COLUMNS if name != "encounter_id"),
    sa.Column("batch_number", sa.Integer, nullable=False, index=True),
    sa.Column("row_in_batch", sa.Integer, nullable=False),  # the row's position in the batch as received
    sa.Column("ingested_at", sa.DateTime, nullable=False),
    **_TABLE_OPTIONS,
)  # fmt: skip
batch_log_table = sa.Table(
    "batch_log", raw_metadata,
    sa.Column("batch_number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("rows_received", sa.Integer, nullable=False),
    sa.Column("rows_stored", sa.Integer, nullable=False),
    sa.Column("rows_rejected", sa.Integer, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),  # SHA-256 of the batch as received
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    **_TABLE_OPTIONS,
)  # fmt: skip
quarantine_table = sa.Table(
    "quarantine", raw_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_number", sa.Integer, nullable=False, index=True),
    sa.Column("stage", sa.String(10), nullable=False),
    sa.Column("encounter_id", sa.Text),  # as it came: it may be what made the row unusable
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw_row", _LONG_TEXT, nullable=False),  # the row as JSON, keyed by source column
    **_TABLE_OPTIONS,
)  # fmt: skip

diabetes_clean = sa.Table(
    "diabetes_clean", clean_metadata,
    *(sa.Column(name, sa.Double, nullable=False) for name in feature_columns()),
    sa.Column(encounter_columns.TARGET_COLUMN, sa.String(8), nullable=False),
    *(sa.Column(name, sa.SmallInteger, nullable=False) for name in TARGET_COLUMNS),
    sa.Column("encounter_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("patient_nbr", sa.BigInteger, nullable=False),
    sa.Column("split", sa.String(10), nullable=False),
    sa.Column("batch_number", sa.Integer, nullable=False, index=True),
    # Covers the split's keys (InnoDB's secondary indexes hold the primary key): reading which
    # encounters a split holds does not scan ~150 feature columns per row.
    sa.Index("ix_diabetes_clean_split", "split", "batch_number"),
    **_TABLE_OPTIONS,
)  # fmt: skip
predictions_table = sa.Table(
    "predictions", clean_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("encounter_id", sa.BigInteger, nullable=False),
    sa.Column("batch_number", sa.Integer, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(50), nullable=False),
    sa.Column("probability", sa.Double, nullable=False),
    sa.Column("prediction", sa.SmallInteger, nullable=False),
    sa.Column("label", sa.SmallInteger),  # the true outcome, when known
    sa.Column("scored_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("encounter_id", "model_version", name="uq_predictions_encounter_version"),
    **_TABLE_OPTIONS,
)  # fmt: skip

RAW_SOURCE_COLUMNS = [diabetes_raw.c[name] for name in encounter_columns.COLUMNS]


class StorageError(RuntimeError):
    """A write that cannot be done as asked, or a database that does not match this code; nothing was written."""


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
    """What `Storage.write_batch` did: the raw write, and the batch's final counts."""

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


class Storage:
    """The raw database (`raw_url`) and the clean database (`clean_url`), SQLite or MySQL."""

    def __init__(self, raw_url: str, clean_url: str, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.raw, self.clean, self.chunk_rows = _engine(raw_url), _engine(clean_url), chunk_rows

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """Storage on RAW_DB_URL and CLEAN_DB_URL, inserting INSERT_CHUNK_ROWS rows per statement."""
        return cls(settings.raw_db_url, settings.clean_db_url, settings.insert_chunk_rows)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.raw.dispose()
        self.clean.dispose()

    # --- schema -------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables and views that do not exist yet (harmless to repeat).

        Raises StorageError when an existing table's columns differ from this code's.
        """
        for engine, metadata in ((self.raw, raw_metadata), (self.clean, clean_metadata)):
            metadata.create_all(engine)
            _check_columns(engine, metadata)
            _add_missing_indexes(engine, metadata)
        create_view = "CREATE VIEW IF NOT EXISTS" if self.clean.dialect.name == "sqlite" else "CREATE OR REPLACE VIEW"
        with self.clean.begin() as conn:
            for split, view in SPLIT_VIEWS.items():
                conn.execute(sa.text(f"{create_view} {view} AS SELECT * FROM diabetes_clean WHERE split = '{split}'"))

    # --- writes -------------------------------------------------------------------------

    def write_raw(self, batch_number: int, frame: pd.DataFrame, source: str) -> RawWrite:
        """Store a batch's rows as they came, in one transaction, replacing what the batch stored before.

        Rows whose encounter_id cannot be keyed (missing, not a whole number, repeated in the
        batch) or is already held by another batch go to the quarantine with the reason. Raises
        SchemaError (nothing written) when the columns are not the 50 source columns.
        """
        rows = _source_rows(frame)
        with self.raw.begin() as conn:
            return self._insert_raw(conn, self._plan_raw(conn, batch_number, rows), source)

    def write_clean(self, batch_number: int, clean_frame: pd.DataFrame, quarantined: pd.DataFrame) -> BatchCounts:
        """Store a batch's clean rows, then its quarantined rows and final counts (see the module docstring).

        `clean_frame` holds `clean.clean_columns()`; `quarantined` the raw columns and a `reason`.
        Together they must account for every raw row of the batch, else StorageError and nothing is written.
        """
        received, raw_rows = self._raw_counts(batch_number)
        if received is None:
            raise StorageError(f"batch {batch_number} has no raw write: store its raw rows first")
        _check_clean(batch_number, clean_frame, quarantined, raw_rows)
        with self.clean.begin() as conn:
            self._insert_clean(conn, batch_number, clean_frame)
        return self._finish(batch_number, received, clean_frame, quarantined)

    def write_batch(self, batch_number: int, frame: pd.DataFrame, source: str, clean: Cleaner) -> BatchWrite:
        """`write_raw`, then `write_clean` of `clean(rows stored raw)`, with both databases written at once.

        The outcome and the guarantees are those of the two calls in sequence: the raw transaction
        commits first, then the clean one, then the bookkeeping, and a failure before the raw commit
        writes nothing. Only faster: the raw rows are inserted (by a worker thread) while the batch is
        cleaned and its clean rows inserted, so both databases work at the same time.
        """
        rows = _source_rows(frame)
        with self.clean.begin() as clean_conn, self.raw.begin() as raw_conn:  # leaving: raw commits, then clean
            plan = self._plan_raw(raw_conn, batch_number, rows)
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-writer") as worker:
                raw_written = worker.submit(self._insert_raw, raw_conn, plan, source)
                clean_frame, quarantined = clean(plan.stored_rows())
                _check_clean(batch_number, clean_frame, quarantined, int(plan.stored.sum()))
                self._insert_clean(clean_conn, batch_number, clean_frame)
                raw = raw_written.result()
        return BatchWrite(raw, self._finish(batch_number, raw.received, clean_frame, quarantined))

    def write_predictions(self, batch_number: int, model_name: str, model_version: str,
                          predictions: pd.DataFrame) -> int:  # fmt: skip
        """Store one model version's predictions for a batch (encounter_id, probability, prediction, label),
        replacing what that version stored for the batch before, in one transaction; the rows written."""
        table = predictions_table
        constants = {"batch_number": batch_number, "model_name": model_name, "model_version": model_version,
                     "scored_at": _now()}  # fmt: skip
        columns = ["encounter_id", "probability", "prediction", "label"]
        with self.clean.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.batch_number == batch_number,
                                                table.c.model_version == model_version))  # fmt: skip
            _insert(conn, table, predictions[columns], constants, self.chunk_rows)
        return len(predictions)

    def _plan_raw(self, conn: Connection, batch_number: int, rows: pd.DataFrame) -> _RawPlan:
        """Delete what the batch stored before and decide which rows to store (in the raw transaction)."""
        started, checksum = _now(), batch_checksum(rows)
        conn.execute(sa.delete(diabetes_raw).where(diabetes_raw.c.batch_number == batch_number))
        conn.execute(sa.delete(quarantine_table).where(quarantine_table.c.batch_number == batch_number))
        return _RawPlan(batch_number, rows, _raw_problems(conn, rows), started, checksum)

    def _insert_raw(self, conn: Connection, plan: _RawPlan, source: str) -> RawWrite:
        """Insert the planned rows, the quarantined ones and the batch's log row (status raw_stored)."""
        kept, number = plan.stored, plan.batch_number
        stored = plan.rows[kept].assign(encounter_id=encounter_ids(plan.rows)[kept], row_in_batch=np.flatnonzero(kept))
        _insert(conn, diabetes_raw, stored, {"batch_number": number, "ingested_at": plan.started}, self.chunk_rows)
        rejected = _quarantine_rows(plan.rows[~kept], plan.reasons[~kept], RAW_STAGE)
        _insert(conn, quarantine_table, rejected, {"batch_number": number}, self.chunk_rows)
        conn.execute(sa.delete(batch_log_table).where(batch_log_table.c.batch_number == number))
        conn.execute(sa.insert(batch_log_table).values(
            batch_number=number, source=source, rows_received=len(plan.rows), rows_stored=len(stored),
            rows_rejected=len(rejected), checksum=plan.checksum, status=RAW_STORED, started_at=plan.started,
        ))  # fmt: skip
        return RawWrite(number, len(plan.rows), len(stored), len(rejected), rows=plan.stored_rows())

    def _insert_clean(self, conn: Connection, batch_number: int, clean_frame: pd.DataFrame) -> None:
        """Replace the batch's clean rows (in the clean transaction)."""
        conn.execute(sa.delete(diabetes_clean).where(diabetes_clean.c.batch_number == batch_number))
        _insert(conn, diabetes_clean, clean_frame[clean_columns()], {"batch_number": batch_number}, self.chunk_rows)

    def _finish(self, batch_number: int, received: int, clean_frame: pd.DataFrame,
                quarantined: pd.DataFrame) -> BatchCounts:  # fmt: skip
        """Store the clean stage's quarantined rows and the batch's final counts (the bookkeeping transaction)."""
        this_batch = quarantine_table.c.batch_number == batch_number
        with self.raw.begin() as conn:
            conn.execute(sa.delete(quarantine_table).where(this_batch, quarantine_table.c.stage == CLEAN_STAGE))
            if len(quarantined):
                rejected = _quarantine_rows(quarantined, quarantined["reason"], CLEAN_STAGE)
                _insert(conn, quarantine_table, rejected, {"batch_number": batch_number}, self.chunk_rows)
            all_rejected = conn.execute(sa.select(sa.func.count()).where(this_batch)).scalar()
            conn.execute(sa.update(batch_log_table).where(batch_log_table.c.batch_number == batch_number).values(
                rows_stored=len(clean_frame), rows_rejected=all_rejected, status=STORED, finished_at=_now(),
            ))  # fmt: skip
        return BatchCounts(batch_number, received, len(clean_frame), all_rejected)

    def _raw_counts(self, batch_number: int) -> tuple[int | None, int]:
        """(rows received as logged, or None without a raw write; raw rows stored) of a batch."""
        with self.raw.connect() as conn:
            received = conn.execute(sa.select(batch_log_table.c.rows_received)
                                    .where(batch_log_table.c.batch_number == batch_number)).scalar()  # fmt: skip
            stored = conn.execute(sa.select(sa.func.count()).where(diabetes_raw.c.batch_number == batch_number))
            return received, stored.scalar()

    # --- reads --------------------------------------------------------------------------

    def batch_log(self) -> pd.DataFrame:
        """Every batch's log row, by batch number."""
        return _read(self.raw, sa.select(batch_log_table).order_by(batch_log_table.c.batch_number))

    def predictions(self) -> pd.DataFrame:
        """Every stored prediction (batch, model version, probability, prediction, label), by batch and id."""
        table = predictions_table
        return _read(self.clean, sa.select(table).order_by(table.c.batch_number, table.c.id))

    def stored_batches(self) -> list[int]:
        """The batches whose raw and clean writes both completed (status `stored`), in order."""
        query = sa.select(batch_log_table.c.batch_number).where(batch_log_table.c.status == STORED)
        with self.raw.connect() as conn:
            return list(conn.execute(query.order_by(batch_log_table.c.batch_number)).scalars())

    def quarantine(self, batch_number: int | None = None) -> pd.DataFrame:
        """The quarantined rows (of one batch, or all), in the order they were quarantined."""
        query = sa.select(quarantine_table).order_by(quarantine_table.c.id)
        if batch_number is not None:
            query = query.where(quarantine_table.c.batch_number == batch_number)
        return _read(self.raw, query)

    def raw_batch(self, batch_number: int) -> pd.DataFrame:
        """A batch's stored raw rows: the 50 source columns as text, in the order the batch brought them."""
        query = (sa.select(*RAW_SOURCE_COLUMNS).where(diabetes_raw.c.batch_number == batch_number)
                 .order_by(diabetes_raw.c.row_in_batch))  # fmt: skip
        return _source_text(_read(self.raw, query))

    def clean_batch(self, batch_number: int) -> pd.DataFrame:
        """A batch's clean rows (`clean.clean_columns()` and batch_number), by encounter_id."""
        query = sa.select(diabetes_clean).where(diabetes_clean.c.batch_number == batch_number)
        return _read(self.clean, query.order_by(diabetes_clean.c.encounter_id))

    def labelled_encounters(self, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
        """The 50 raw source columns (text), `split` and `batch_number` of every clean encounter in `splits`.

        What models train on: raw columns, so the logged model holds its own `EncounterFeatures`.
        The two databases are joined here by encounter_id, reading the clean side's keys first.
        """
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}: choose from {SPLITS}")
        clean, raw = diabetes_clean.c, diabetes_raw.c
        keys = _read(
            self.clean, sa.select(clean.encounter_id, clean.split, clean.batch_number).where(clean.split.in_(splits))
        )
        columns = [*encounter_columns.COLUMNS, "split", "batch_number"]
        if keys.empty:
            return pd.DataFrame(columns=columns, dtype=object)
        query = sa.select(*RAW_SOURCE_COLUMNS, raw.batch_number, raw.row_in_batch)
        if set(splits) == set(SPLITS):  # every row of those batches
            batches = sorted(int(b) for b in keys["batch_number"].unique())
            rows = _read(self.raw, query.where(raw.batch_number.in_(batches)))
        else:  # a part of each batch: only its rows
            rows = pd.concat([_read(self.raw, query.where(_inlined_in(raw.encounter_id, ids)))
                              for ids in _chunks(keys["encounter_id"].astype("int64").tolist(), IN_LIST_IDS)],
                             ignore_index=True)  # fmt: skip
        # Sorted here: an ORDER BY makes the server sort whole rows, which costs more.
        rows = rows.sort_values(["batch_number", "row_in_batch"], ignore_index=True)
        # encounter_id is the key of both tables: a lookup, not a merge, keeps the rows in place.
        split = rows["encounter_id"].map(keys.set_index("encounter_id")["split"])
        rows = rows.assign(split=split.astype(object))
        if split.isna().any():  # raw rows the clean stage quarantined
            rows = rows[split.notna().to_numpy()].reset_index(drop=True)
        return _source_text(rows)[columns]


# --- helpers --------------------------------------------------------------------------


def _source_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The batch's 50 source columns as text, in order (SchemaError when its columns are not those)."""
    validate_columns(frame)
    return frame[list(encounter_columns.COLUMNS)].astype("string").reset_index(drop=True)


def _check_clean(batch_number: int, clean_frame: pd.DataFrame, quarantined: pd.DataFrame, raw_rows: int) -> None:
    """Raise StorageError unless the clean rows have their columns and, with the quarantined ones, make the raw rows."""
    missing = [c for c in clean_columns() if c not in clean_frame.columns]
    if missing:
        raise StorageError(f"batch {batch_number}: the clean rows lack the columns {missing}")
    if len(clean_frame) + len(quarantined) != raw_rows:
        raise StorageError(f"batch {batch_number}: {len(clean_frame)} clean and {len(quarantined)} quarantined "
                           f"rows do not account for its {raw_rows} raw rows")  # fmt: skip


def _raw_problems(conn: Connection, rows: pd.DataFrame) -> pd.Series:
    """Why each row cannot be stored raw ("" when it can): its key, or an encounter_id another batch holds.

    Call it once the batch's own earlier rows are deleted, in the transaction that stores the rows.
    """
    reasons = key_problems(rows)
    keyed = encounter_ids(rows)[reasons == ""]
    owners = keyed.map(_owners(conn, keyed)).dropna()
    reasons[owners.index] = ("encounter_id '" + rows.loc[owners.index, "encounter_id"]
                             + "' is already stored by batch " + owners.astype("int64").astype("string"))  # fmt: skip
    return reasons


def _owners(conn: Connection, ids: pd.Series) -> dict[int, int]:
    """{encounter_id: batch_number} of the given ids that diabetes_raw holds."""
    owners: dict[int, int] = {}
    raw = diabetes_raw.c
    for chunk in _chunks(ids.astype("int64").tolist(), IN_LIST_IDS):
        query = sa.select(raw.encounter_id, raw.batch_number).where(_inlined_in(raw.encounter_id, chunk))
        owners.update(conn.execute(query).tuples().all())
    return owners


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _inlined_in(column: sa.Column, ids: list[int]) -> sa.ColumnElement[bool]:
    """`column IN (ids)` with the integers written into the SQL: thousands of bound parameters cost more."""
    return column.in_(sa.text(",".join(str(int(i)) for i in ids)))


def _engine(url: str) -> Engine:
    """An engine on `url`; a SQLite file's folder is created when missing.

    MySQL connections may send local files (LOAD DATA LOCAL INFILE, see `_insert_mysql`) unless
    the URL says `local_infile=0`; each connection notes whether its server accepts them.
    """
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(parsed)
    if backend not in _MYSQL:
        return sa.create_engine(parsed, pool_pre_ping=True)
    local_files = parsed.query.get("local_infile", "1") not in ("0", "false", "False")
    engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args={"local_infile": local_files})
    if local_files:
        sa.event.listen(engine, "connect", _note_whether_the_server_takes_local_files)
    return engine


def _note_whether_the_server_takes_local_files(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT @@GLOBAL.local_infile")
        record.info[_LOCAL_FILES] = bool(int(cursor.fetchone()[0]))
    finally:
        cursor.close()


def _now() -> datetime:
    """Now in UTC, to the second (what every backend's DATETIME keeps alike)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def _check_columns(engine: Engine, metadata: sa.MetaData) -> None:
    """Raise StorageError when a table in the database has other columns than this code defines."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        found = {column["name"] for column in inspector.get_columns(table.name)}
        expected = set(table.columns.keys())
        if found != expected:
            raise StorageError(
                f"table {table.name} in {engine.url.render_as_string(hide_password=True)} does not match this code: "
                f"missing {sorted(expected - found)}, unexpected {sorted(found - expected)}; migrate or drop it"
            )


def _add_missing_indexes(engine: Engine, metadata: sa.MetaData) -> None:
    """Create the indexes this code defines that existing tables lack (added since they were created)."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        existing = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in existing:
                index.create(engine)


def batch_checksum(rows: pd.DataFrame) -> str:
    """SHA-256 of a batch's content: the header and every row of the source columns, missing cells as \\N."""
    cells = [pc.fill_null(pa.array(rows[c].astype("string"), type=pa.string()), "\\N") for c in encounter_columns.COLUMNS]
    lines = pc.binary_join_element_wise(*cells, "\x1f").to_pylist() if len(rows) else []
    return hashlib.sha256("\x1e".join(["\x1f".join(encounter_columns.COLUMNS), *lines]).encode()).hexdigest()


def _quarantine_rows(rows: pd.DataFrame, reasons: pd.Series, stage: str) -> pd.DataFrame:
    """Quarantine rows for `rows`: stage, encounter_id as it came, reason, and the source columns as JSON."""
    if rows.empty:
        return pd.DataFrame(columns=["stage", "encounter_id", "reason", "raw_row"])
    source = rows[list(encounter_columns.COLUMNS)].astype("string").astype(object)
    source = source.where(source.notna(), None)
    return pd.DataFrame({
        "stage": stage,
        "encounter_id": source["encounter_id"].to_numpy(),
        "reason": reasons.astype(object).to_numpy(),
        "raw_row": [json.dumps(dict(zip(encounter_columns.COLUMNS, row, strict=True))) for row in source.itertuples(index=False)],
    })  # fmt: skip


def _read(engine: Engine, query: sa.Select) -> pd.DataFrame:
    """The result of `query` as a DataFrame with its columns, even when empty: text as Python strings
    (None when missing), numbers and times as pandas infers them."""
    with engine.connect() as conn:
        result = conn.execute(query)
        # MySQL drivers return Python values SQLAlchemy leaves alone; their tuples skip the
        # construction of a Row per row, which costs more than the driver's own parsing.
        rows = result.cursor.fetchall() if conn.dialect.name in _MYSQL else result.fetchall()
        frame = pd.DataFrame(list(rows), columns=list(result.keys()), dtype=object)
    # Text stays as the driver's strings: pandas' own string columns would cost a conversion
    # each way, and every reader of text here wants Python strings.
    other = [column.name for column in query.selected_columns if not isinstance(column.type, sa.String)]
    frame[other] = frame[other].infer_objects()
    return frame


def _source_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows `_read` from diabetes_raw with the source columns as the data API client gives them: text or
    None (as read), and encounter_id (a BIGINT) back as text."""
    return frame.assign(
        encounter_id=pd.Series([str(i) for i in frame["encounter_id"]], index=frame.index, dtype=object)
    )


def _insert(conn: Connection, table: sa.Table, frame: pd.DataFrame, constants: dict[str, Any], chunk_rows: int) -> None:
    """Insert `frame`'s rows, each with the same `constants`, `chunk_rows` rows per statement."""
    if frame.empty:
        return
    if conn.dialect.name in _MYSQL:
        _insert_mysql(conn, table, frame, constants, chunk_rows)
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


# --- MySQL inserts ----------------------------------------------------------------------
# pymysql's executemany escapes every value in Python: seconds for the raw and clean rows of one
# 15,000-row batch. Here the values become text in Arrow, a whole column (or every number of the
# batch) per call, and rows are joined by Arrow too; the driver formats nothing.
#
# Where the server takes local files (`local_infile`: on in MariaDB, off by default in MySQL 8,
# which our compose and Kubernetes files switch on), each chunk of rows goes as a tab-separated
# file through LOAD DATA LOCAL INFILE: the server reads fields instead of parsing SQL literals,
# about half the server CPU for the ~150 columns of the clean rows. LOCAL turns a bad value or a
# duplicate key into a warning where INSERT fails, so a load with any warning raises
# StorageError (and the transaction rolls back). Elsewhere the rows go as multi-row INSERTs of
# SQL literals. Text is escaped as the driver's own `escape_string` escapes a backslash (it knows
# whether the server runs with NO_BACKSLASH_ESCAPES); the connection speaks utf8mb4, where no
# multi-byte character can hide a quote.


@dataclass(frozen=True)
class _Format:
    """How values become text: `null` for a missing value, `text` renders the text values."""

    null: str
    text: Callable[[pa.Array], pa.Array]


def _insert_mysql(conn: Connection, table: sa.Table, frame: pd.DataFrame, constants: dict[str, Any],
                  chunk_rows: int) -> None:  # fmt: skip
    table_rows = pa.Table.from_pandas(frame, preserve_index=False)  # once: per chunk it costs ~0.2 ms a column
    chunks = [table_rows.slice(start, chunk_rows) for start in range(0, len(frame), chunk_rows)]
    if conn.connection.info.get(_LOCAL_FILES):
        _load_mysql(conn, table, chunks, constants)
        return
    driver = conn.connection.dbapi_connection
    backslash_escapes = _text_of(driver.escape_string)("\\") == "\\\\"
    sql = _Format("NULL", lambda text: _quoted(text, backslash_escapes))
    constant = "".join("," + _text_of(driver.literal)(value) for value in constants.values())
    quote = conn.dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table.name)} ({','.join(quote(c) for c in [*frame.columns, *constants])}) VALUES "

    def statements() -> Iterator[str]:
        for chunk in chunks:
            rows = pc.binary_join_element_wise(*_mysql_values(chunk, sql), ",").to_pylist()
            yield from _statements(head, (f"({row}{constant})" for row in rows), chunk_rows)

    _execute_pipelined(lambda statement: conn.exec_driver_sql(statement, None, {"no_parameters": True}), statements())


def _load_mysql(conn: Connection, table: sa.Table, chunks: list[pa.Table], constants: dict[str, Any]) -> None:
    """LOAD DATA LOCAL INFILE of each chunk, written to a tab-separated file while the server loads the previous one."""
    literal = _text_of(conn.connection.dbapi_connection.literal)
    quote = conn.dialect.identifier_preparer.quote
    columns = ",".join(quote(c) for c in chunks[0].column_names)
    assignments = ", ".join(f"{quote(name)} = {literal(value)}" for name, value in constants.items())
    # The format spelled out in hex: NO_BACKSLASH_ESCAPES changes the default escape and how '\\' reads.
    into = (
        f" INTO TABLE {quote(table.name)} CHARACTER SET utf8mb4 FIELDS TERMINATED BY X'09' ESCAPED BY X'5C'"
        f" LINES TERMINATED BY X'0A' ({columns})" + (f" SET {assignments}" if assignments else "")
    )

    def load(file: tuple[Path, int]) -> None:
        path, rows = file
        _load(conn, f"LOAD DATA LOCAL INFILE {literal(str(path))}{into}", rows, table)

    with tempfile.TemporaryDirectory(prefix="readmission-load-") as folder:
        files = (_tab_separated_file(Path(folder) / f"{n}.tsv", chunk) for n, chunk in enumerate(chunks))
        _execute_pipelined(load, files)


def _tab_separated_file(path: Path, chunk: pa.Table) -> tuple[Path, int]:
    """Write `chunk` as LOAD DATA reads it (a line per row, tab-separated, backslash escapes, \\N for missing).

    Returns (path, rows).
    """
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*_mysql_values(chunk, _LOAD_DATA), "\t"), "\n", "")
    first, end = np.frombuffer(lines.buffers()[1], dtype=np.int32)[[lines.offset, lines.offset + len(lines)]]
    with path.open("wb") as file:  # the lines' characters, one after another, are the file
        file.write(lines.buffers()[2][first:end])
    return path, chunk.num_rows


def _load(conn: Connection, statement: str, rows: int, table: sa.Table) -> None:
    """Run a LOAD DATA LOCAL statement of `rows` rows; StorageError if the server skipped or changed any value."""
    loaded = conn.exec_driver_sql(statement, None, {"no_parameters": True}).rowcount
    warnings = conn.exec_driver_sql("SHOW WARNINGS LIMIT 3", None, {"no_parameters": True}).fetchall()
    if warnings or loaded != rows:
        problems = "; ".join(str(warning[2]) for warning in warnings) or f"{loaded} of {rows} rows loaded"
        raise StorageError(f"the database did not take the rows for {table.name} as they are: {problems}")


def _execute_pipelined(run: Callable[[Any], Any], statements: Iterable[Any]) -> None:
    """`run` each statement in order, one at a time, rendering the next while the server runs the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql-sender") as sender:
        running: Future | None = None
        for statement in statements:
            if running is not None:
                running.result()  # the connection serves one statement at a time
            running = sender.submit(run, statement)
        if running is not None:
            running.result()


def _text_of(function: Callable[[Any], str | bytes]) -> Callable[[Any], str]:
    """`function` with a bytes result decoded (mysqlclient returns bytes where pymysql returns str)."""

    def text(value: Any) -> str:
        result = function(value)
        return result.decode() if isinstance(result, bytes) else result

    return text


def _mysql_values(table: pa.Table, form: _Format) -> list[pa.Array]:
    """Each column of `table` as text in `form`: numbers as Arrow writes them, text as `form` renders it.

    Columns of a kind go through Arrow together, as one long array: a handful of calls per
    chunk of rows instead of a handful per column.
    """
    kinds: dict[str, list[int]] = {"float": [], "integer": [], "text": []}
    for i, column in enumerate(table.columns):
        kind = "float" if pa.types.is_floating(column.type) else "integer" if _is_integer(column.type) else "text"
        kinds[kind].append(i)
    rendered: dict[int, pa.Array] = {}
    rows = table.num_rows
    for kind, render in (("float", _floats), ("integer", _integers), ("text", form.text)):
        if kinds[kind]:
            values = pc.fill_null(
                render(pa.concat_arrays([_as(table.column(i), kind) for i in kinds[kind]])), form.null
            )
            rendered |= {i: values.slice(n * rows, rows) for n, i in enumerate(kinds[kind])}
    return [rendered[i] for i in range(table.num_columns)]


def _is_integer(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def _as(column: pa.ChunkedArray, kind: str) -> pa.Array:
    """A column as one array of its kind's common type: float64, int64 or string."""
    return pc.cast(column.combine_chunks(), {"float": pa.float64(), "integer": pa.int64(), "text": pa.string()}[kind])


def _floats(values: pa.Array) -> pa.Array:
    """Floats as text, each distinct number rendered once (features repeat a lot); NaN and null as null."""
    numbers = values.to_numpy(zero_copy_only=False)
    if np.isinf(numbers).any():
        raise StorageError("an infinite number cannot be stored in SQL")
    codes, distinct = pd.factorize(numbers)  # NaN gets -1
    return pc.take(pc.cast(pa.array(distinct), pa.string()), pa.array(codes, mask=codes < 0))


def _integers(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _quoted(text: pa.Array, backslash_escapes: bool) -> pa.Array:
    """Text as quoted SQL string literals, escaped for the server's mode."""
    if _holds(text, b"'\\"):
        if backslash_escapes:
            text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), "'", "\\'")
        else:
            text = pc.replace_substring(text, "'", "''")
    return pc.binary_join_element_wise("'", text, "'", "")


def _field_escaped(text: pa.Array) -> pa.Array:
    """Text as LOAD DATA fields: backslash, tab, newline, carriage return and NUL escaped with a backslash."""
    if _holds(text, b"\\\t\n\r\0"):
        text = pc.replace_substring(text, "\\", "\\\\")
        for character, escaped in (("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\0", "\\0")):
            text = pc.replace_substring(text, character, escaped)
    return text


def _holds(text: pa.Array, characters: bytes) -> bool:
    """Whether any value of `text` holds any of `characters` (else there is nothing to escape)."""
    data = text.buffers()[2].to_pybytes() if text.buffers()[2] is not None else b""
    return any(bytes([c]) in data for c in characters)


_LOAD_DATA = _Format("\\N", _field_escaped)


def _statements(head: str, rows: Iterable[str], chunk_rows: int) -> Iterator[str]:
    """`head` followed by up to `chunk_rows` rows (and at most MAX_STATEMENT_CHARS) per statement."""
    chunk: list[str] = []
    size = len(head)
    for row in rows:
        if chunk and (len(chunk) == chunk_rows or size + len(row) > MAX_STATEMENT_CHARS):
            yield head + ",".join(chunk)
            chunk, size = [], len(head)
        chunk.append(row)
        size += len(row) + 1
    if chunk:
        yield head + ",".join(chunk)
