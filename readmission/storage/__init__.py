"""Raw and clean storage (SQLAlchemy Core): two databases, and every write of a batch is atomic.

`Storage` is the one entry point; the work is done by its modules:

* `tables`: the tables, views and indexes of both databases, and the check that a database matches them;
* `writes`: the write protocol (raw, clean, quarantine, batch log, predictions; atomic and repeatable);
* `reads`: the read and join queries;
* `mysql_loader`: how rows reach a MySQL server fast (Arrow rendering, LOAD DATA LOCAL INFILE, pipelining).

SQLite and MySQL (MariaDB) are the supported databases, MySQL through PyMySQL (`mysql+pymysql://`)
or mysqlclient (`mysql+mysqldb://`, what the DAG uses: it parses results in C and reads rows
four times faster).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from readmission.config import Settings
from readmission.split import SPLITS
from readmission.storage import reads, tables, writes
from readmission.storage.mysql_loader import MAX_STATEMENT_CHARS
from readmission.storage.tables import (
    RAW_STORED,
    REBUILD_CLEAN,
    STORED,
    StorageError,
    diabetes_clean,
    diabetes_raw,
)
from readmission.storage.writes import BatchCounts, BatchWrite, Cleaner, RawWrite, batch_checksum

__all__ = [
    "MAX_STATEMENT_CHARS",
    "RAW_STORED",
    "REBUILD_CLEAN",
    "STORED",
    "BatchCounts",
    "BatchWrite",
    "Cleaner",
    "RawWrite",
    "Storage",
    "StorageError",
    "batch_checksum",
    "diabetes_clean",
    "diabetes_raw",
]

DEFAULT_CHUNK_ROWS: int = Settings.model_fields["insert_chunk_rows"].default


class Storage:
    """The raw database (`raw_url`) and the clean database (`clean_url`), SQLite or MySQL."""

    def __init__(self, raw_url: str, clean_url: str, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.raw, self.clean, self.chunk_rows = tables.engine(raw_url), tables.engine(clean_url), chunk_rows

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """Storage on RAW_DB_URL and CLEAN_DB_URL, inserting INSERT_CHUNK_ROWS rows per statement."""
        return cls(settings.raw_db_url, settings.clean_db_url, settings.insert_chunk_rows)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.raw.dispose()
        self.clean.dispose()

    # --- tables (storage.tables) ---------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables and views that do not exist yet; StorageError when an existing table differs."""
        tables.create_schema(self.raw, self.clean)

    def drop_clean_table(self) -> None:
        """Drop `diabetes_clean` and its views, to rebuild it from the raw rows (`ingest.rebuild_clean`)."""
        tables.drop_clean_table(self.clean)

    # --- writes (storage.writes) ---------------------------------------------------------------

    def write_raw(self, batch_number: int, frame: pd.DataFrame, source: str) -> RawWrite:
        """Store a batch's rows as they came, quarantining the rows that cannot be keyed (`writes.write_raw`)."""
        return writes.write_raw(self, batch_number, frame, source)

    def write_clean(self, batch_number: int, clean_frame: pd.DataFrame, quarantined: pd.DataFrame) -> BatchCounts:
        """Store a batch's clean rows, then its quarantined rows and final counts (`writes.write_clean`)."""
        return writes.write_clean(self, batch_number, clean_frame, quarantined)

    def write_batch(self, batch_number: int, frame: pd.DataFrame, source: str, clean: Cleaner) -> BatchWrite:
        """`write_raw`, then `write_clean` of `clean(rows stored raw)`, both databases at once (`writes.write_batch`)."""
        return writes.write_batch(self, batch_number, frame, source, clean)

    def write_predictions(self, batch_number: int, model_name: str, model_version: str, rows: pd.DataFrame) -> int:
        """Store one model version's predictions for a batch, replacing its earlier ones (`writes.write_predictions`)."""
        return writes.write_predictions(self, batch_number, model_name, model_version, rows)

    # --- reads (storage.reads) -----------------------------------------------------------------

    def batch_log(self) -> pd.DataFrame:
        """Every batch's log row, by batch number."""
        return reads.batch_log(self)

    def predictions(self) -> pd.DataFrame:
        """Every stored prediction, by batch and id."""
        return reads.predictions(self)

    def stored_batches(self) -> list[int]:
        """The batches whose raw and clean writes both completed (status `stored`), in order."""
        return reads.stored_batches(self)

    def quarantine(self, batch_number: int | None = None) -> pd.DataFrame:
        """The quarantined rows (of one batch, or all), in the order they were quarantined."""
        return reads.quarantine(self, batch_number)

    def read_raw_batch(self, batch_number: int) -> pd.DataFrame:
        """A batch's stored raw rows: the 50 source columns as text, in the order the batch brought them."""
        return reads.read_raw_batch(self, batch_number)

    def read_clean_batch(self, batch_number: int) -> pd.DataFrame:
        """A batch's clean rows: typed source columns, split and batch keys, in batch order."""
        return reads.read_clean_batch(self, batch_number)

    def labelled_encounters(self, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
        """The typed source columns, `split` and `batch_number` of every clean encounter in `splits`."""
        return reads.labelled_encounters(self, splits)
