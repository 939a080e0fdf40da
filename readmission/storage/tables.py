"""The tables of the two databases, their views and indexes, and the check that a database matches them.

* `raw_data_db`: `diabetes_raw` (the 50 source columns as the text they came as, except
  `encounter_id`, the BIGINT primary key; plus `batch_number`, `row_in_batch` and
  `ingested_at`), `batch_log` (one row per batch) and `quarantine` (the rows that were not
  stored or not cleaned, with the stage, the reason and the row as JSON).
* `clean_data_db`: `diabetes_clean` (each validated encounter's 50 source columns typed, see
  `readmission.clean`, its `split`, `batch_number` and `row_in_batch`), the views
  `train_data` / `validation_data` / `test_data`, and `predictions` (filled by batch scoring).

A database created by older code is checked against these tables (`create_schema`): a table
whose columns differ is refused with StorageError saying how to migrate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from readmission import schema
from readmission.clean import INTEGER_COLUMNS
from readmission.split import SPLITS

RAW_STORED, STORED = "raw_stored", "stored"  # batch_log statuses
SPLIT_VIEWS = {split: f"{split}_data" for split in SPLITS}
MYSQL_DIALECTS = ("mysql", "mariadb")
LOCAL_FILES = "readmission_local_files"  # connection info key: the server takes LOAD DATA LOCAL INFILE
REBUILD_CLEAN = "readmission rebuild-clean"  # the command that rebuilds diabetes_clean from diabetes_raw
_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
_LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")  # MySQL's TEXT stops at 64 KB
_COUNT_COLUMNS = set(schema.COUNT_RANGES)


class StorageError(RuntimeError):
    """A write that cannot be done as asked, or a database that does not match this code; nothing was written."""


class Databases(Protocol):
    """The two databases the writes and reads work on (a `Storage`), and the rows per INSERT."""

    raw: Engine
    clean: Engine
    chunk_rows: int


raw_metadata = sa.MetaData()
clean_metadata = sa.MetaData()

diabetes_raw = sa.Table(
    "diabetes_raw",
    raw_metadata,
    sa.Column("encounter_id", sa.BigInteger, primary_key=True, autoincrement=False),
    *(sa.Column(name, _LONG_TEXT) for name in schema.COLUMNS if name != "encounter_id"),
    sa.Column("batch_number", sa.Integer, nullable=False, index=True),
    sa.Column("row_in_batch", sa.Integer, nullable=False),  # the row's position in the batch as received
    sa.Column("ingested_at", sa.DateTime, nullable=False),
    **_TABLE_OPTIONS,
)
batch_log_table = sa.Table(
    "batch_log",
    raw_metadata,
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
)
quarantine_table = sa.Table(
    "quarantine",
    raw_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_number", sa.Integer, nullable=False, index=True),
    sa.Column("stage", sa.String(10), nullable=False),
    sa.Column("encounter_id", sa.Text),  # as it came: it may be what made the row unusable
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw_row", _LONG_TEXT, nullable=False),  # the row as JSON, keyed by source column
    **_TABLE_OPTIONS,
)


def _clean_column(name: str) -> sa.Column:
    """A source column as `diabetes_clean` types it (see readmission.clean)."""
    if name == "encounter_id":
        return sa.Column(name, sa.BigInteger, primary_key=True, autoincrement=False)
    if name not in INTEGER_COLUMNS:
        return sa.Column(name, _LONG_TEXT)  # NULL: missing
    kind = sa.SmallInteger if name in _COUNT_COLUMNS else sa.BigInteger if name in schema.ID_COLUMNS else sa.Integer
    return sa.Column(name, kind, nullable=False)


diabetes_clean = sa.Table(
    "diabetes_clean",
    clean_metadata,
    *(_clean_column(name) for name in schema.COLUMNS),
    sa.Column("split", sa.String(10), nullable=False),
    sa.Column("batch_number", sa.Integer, nullable=False, index=True),
    sa.Column("row_in_batch", sa.Integer, nullable=False),  # as in diabetes_raw: the batch's order as received
    # Covers the split's keys (InnoDB's secondary indexes hold the primary key): reading which
    # encounters a split holds does not scan the rows' ~50 columns.
    sa.Index("ix_diabetes_clean_split", "split", "batch_number"),
    **_TABLE_OPTIONS,
)
predictions_table = sa.Table(
    "predictions",
    clean_metadata,
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
)

RAW_SOURCE_COLUMNS = [diabetes_raw.c[name] for name in schema.COLUMNS]
CLEAN_SOURCE_COLUMNS = [diabetes_clean.c[name] for name in schema.COLUMNS]


def engine(url: str) -> Engine:
    """An engine on `url`; a SQLite file's folder is created when missing.

    MySQL connections may send local files (LOAD DATA LOCAL INFILE, see `storage.mysql_loader`)
    unless the URL says `local_infile=0`; each connection notes whether its server accepts them.
    """
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(parsed)
    if backend not in MYSQL_DIALECTS:
        return sa.create_engine(parsed, pool_pre_ping=True)
    local_files = parsed.query.get("local_infile", "1") not in ("0", "false", "False")
    created = sa.create_engine(parsed, pool_pre_ping=True, connect_args={"local_infile": local_files})
    if local_files:
        sa.event.listen(created, "connect", _note_whether_the_server_takes_local_files)
    return created


def _note_whether_the_server_takes_local_files(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT @@GLOBAL.local_infile")
        record.info[LOCAL_FILES] = bool(int(cursor.fetchone()[0]))
    finally:
        cursor.close()


def create_schema(raw: Engine, clean: Engine) -> None:
    """Create the tables and views that do not exist yet (harmless to repeat).

    Raises StorageError when an existing table's columns differ from this code's.
    """
    for database, metadata in ((raw, raw_metadata), (clean, clean_metadata)):
        metadata.create_all(database)
        _check_columns(database, metadata)
        _add_missing_indexes(database, metadata)
    create_view = "CREATE VIEW IF NOT EXISTS" if clean.dialect.name == "sqlite" else "CREATE OR REPLACE VIEW"
    with clean.begin() as conn:
        for split, view in SPLIT_VIEWS.items():
            conn.execute(sa.text(f"{create_view} {view} AS SELECT * FROM diabetes_clean WHERE split = '{split}'"))


def drop_clean_table(clean: Engine) -> None:
    """Drop `diabetes_clean` and its views (the predictions stay): what rebuilding it from the raw rows starts with."""
    with clean.begin() as conn:
        for view in SPLIT_VIEWS.values():
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {view}"))
    diabetes_clean.drop(clean, checkfirst=True)


def _check_columns(database: Engine, metadata: sa.MetaData) -> None:
    """Raise StorageError when a table in the database has other columns than this code defines."""
    inspector = sa.inspect(database)
    for table in metadata.sorted_tables:
        found = {column["name"] for column in inspector.get_columns(table.name)}
        expected = set(table.columns.keys())
        if found != expected:
            where = database.url.render_as_string(hide_password=True)
            how = (
                f"it holds only what diabetes_raw holds, so rebuild it from there with `{REBUILD_CLEAN}`"
                if table is diabetes_clean
                else "migrate or drop it"
            )
            raise StorageError(
                f"table {table.name} in {where} does not match this code: missing {sorted(expected - found)}, "
                f"unexpected {sorted(found - expected)}; {how}"
            )


def _add_missing_indexes(database: Engine, metadata: sa.MetaData) -> None:
    """Create the indexes this code defines that existing tables lack (added since they were created)."""
    inspector = sa.inspect(database)
    for table in metadata.sorted_tables:
        existing = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in existing:
                index.create(database)
