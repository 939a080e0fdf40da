"""Ingestion, the one path a batch takes into storage: the CLI and the Airflow DAG both call these steps.

    fetch -> store_raw -> validate_and_clean -> store_clean

* `store_raw` stores the batch's rows as they came (`diabetes_raw`), quarantining rows that
  cannot be keyed;
* `validate_and_clean` splits the stored raw rows into clean rows (typed, with their split:
  `readmission.clean`) and quarantined rows with a reason; it runs once per batch;
* `store_clean` stores the clean rows (`diabetes_clean`), the quarantined rows and the final counts.

`ingest_batch` chains them for one batch with both databases written at once (the CLI),
`ingest_file` for every batch of a file (back-fills). The DAG runs `store_raw` and
`clean_stored_batch` + `store_clean` as two tasks, reading the raw rows back in between.
`rebuild_clean` cleans every stored batch again from its raw rows (a clean table of an older layout).

A batch whose columns are wrong as a whole is refused with SchemaError before anything is
written: the raw write checks first, and `validate_and_clean` checks again before the clean write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from readmission.clean import clean_rows
from readmission.dataset import iter_dataset_chunks
from readmission.sources import Batch, fetch_batch
from readmission.storage import BatchCounts, RawWrite, Storage
from readmission.validation import split_valid_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanedBatch:
    """A batch after validation: its clean rows (`clean.CLEAN_COLUMNS`) and its quarantined raw rows with a reason."""

    clean: pd.DataFrame
    quarantined: pd.DataFrame


@dataclass(frozen=True)
class IngestResult:
    """What ingesting one batch did: rows received, stored raw, stored clean, and quarantined."""

    batch_number: int
    received: int
    raw_rows: int
    clean_rows: int
    rejected: int

    def __str__(self) -> str:
        return (
            f"batch {self.batch_number}: {self.received} rows received, {self.raw_rows} stored raw, "
            f"{self.clean_rows} stored clean, {self.rejected} quarantined"
        )


def fetch(data_api_url: str, batch_number: int | None = None, timeout: float = 60.0) -> Batch:
    """Batch `batch_number` (None: the current one) from the data API; see `sources.fetch_batch` for errors."""
    return fetch_batch(data_api_url, batch_number, timeout=timeout)


def store_raw(storage: Storage, batch: Batch, source: str) -> RawWrite:
    """Store the batch's rows as they came (SchemaError, nothing written, when its columns are wrong)."""
    return storage.write_raw(batch.number, batch.rows, source)


def validate_and_clean(raw_rows: pd.DataFrame) -> CleanedBatch:
    """Split raw rows into clean rows (typed columns and split) and quarantined rows with reasons.

    Raises SchemaError when the columns are wrong as a whole.
    """
    valid, quarantined = split_valid_rows(raw_rows)
    return CleanedBatch(clean_rows(valid), quarantined)


def clean_stored_batch(storage: Storage, batch_number: int) -> CleanedBatch:
    """`validate_and_clean` of the raw rows a batch stored (by an earlier `store_raw`)."""
    return validate_and_clean(storage.read_raw_batch(batch_number))


def store_clean(storage: Storage, batch_number: int, cleaned: CleanedBatch) -> BatchCounts:
    """Store the clean rows, the quarantined rows and the batch's final counts."""
    return storage.write_clean(batch_number, cleaned.clean, cleaned.quarantined)


def ingest_batch(storage: Storage, batch: Batch, source: str) -> IngestResult:
    """Store one batch raw and clean: `store_raw`, `validate_and_clean` and `store_clean` in one call, with
    the raw rows inserted while the batch is cleaned (`Storage.write_batch`). Nothing is written when the
    batch's columns are wrong (SchemaError).
    """

    def clean(raw_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        cleaned = validate_and_clean(raw_rows)
        return cleaned.clean, cleaned.quarantined

    written = storage.write_batch(batch.number, batch.rows, source, clean)
    raw, final = written.raw, written.final
    result = IngestResult(batch.number, raw.received, raw.stored, final.stored, final.rejected)
    log.info("%s (from %s)", result, source)
    return result


def file_batches(path: str | Path, batch_size: int) -> Iterator[Batch]:
    """The batches of a data set file, numbered from 1 in file order, as the data API would cut them."""
    for number, rows in enumerate(iter_dataset_chunks(str(path), batch_size), start=1):
        yield Batch(number=number, total_batches=0, rows=rows)  # 0: the total is unknown while streaming


def ingest_file(storage: Storage, path: str | Path, batch_size: int) -> list[IngestResult]:
    """Ingest every batch of a data set file (a back-fill); batch numbers match the data API's."""
    return [ingest_batch(storage, batch, f"file:{path}") for batch in file_batches(path, batch_size)]


def rebuild_clean(storage: Storage) -> list[BatchCounts]:
    """Drop `diabetes_clean` and clean every logged batch again from its raw rows; each batch's final counts.

    What a clean table of an older layout migrates with: the raw rows are the source of truth and
    cleaning them is a pure function. The predictions stay. Each batch is written as `store_clean`
    writes it (atomic per batch); a batch that fails leaves the earlier ones rebuilt, and running
    this again finishes the job.
    """
    storage.drop_clean_table()
    storage.create_schema()
    rebuilt = []
    for number in storage.batch_log()["batch_number"].astype(int).tolist():
        counts = store_clean(storage, number, clean_stored_batch(storage, number))
        log.info("batch %d: %d rows stored clean again, %d quarantined in all", number, counts.stored, counts.rejected)
        rebuilt.append(counts)
    return rebuilt
