"""Ingestion stages: from the real data API over HTTP, or a file, into raw and clean storage."""

from __future__ import annotations

import pandas as pd
import pytest

from readmission import ingest, schema
from readmission.dataset import load_dataset
from readmission.sources import Batch
from readmission.storage import STORED
from readmission.validation import SchemaError
from tests.factories import encounter_rows


def as_served(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as the data API client holds it: object columns, None for missing cells."""
    frame = frame.astype(object)
    return frame.where(frame.notna(), None).reset_index(drop=True)


def test_a_batch_from_the_data_api_is_stored_raw_and_clean(storage, synthetic_data_api, synthetic_csv):
    batch = ingest.fetch(synthetic_data_api, 2)
    result = ingest.ingest_batch(storage, batch, source=f"data-api:{synthetic_data_api}")
    assert (result.batch_number, result.received, result.raw_rows, result.clean_rows, result.rejected) == (
        2, 1_000, 1_000, 1_000, 0)  # fmt: skip
    expected = as_served(load_dataset(synthetic_csv).iloc[1_000:2_000])
    pd.testing.assert_frame_equal(storage.read_raw_batch(2), expected)
    assert len(storage.read_clean_batch(2)) == 1_000
    assert storage.batch_log().loc[0, "status"] == STORED


def test_bad_rows_are_quarantined_and_counted_while_the_rest_is_stored(storage):
    rows = encounter_rows(90, seed=1)
    rows.loc[0, "encounter_id"] = "?"
    rows.loc[1, "number_inpatient"] = "-2"
    result = ingest.ingest_batch(storage, Batch(number=5, total_batches=9, rows=rows), source="test")
    assert (result.received, result.raw_rows, result.clean_rows, result.rejected) == (90, 89, 88, 2)
    assert str(result) == "batch 5: 90 rows received, 89 stored raw, 88 stored clean, 2 quarantined"
    assert storage.quarantine(5)["stage"].tolist() == ["raw", "clean"]


def test_a_batch_whose_every_row_is_quarantined_is_logged_with_nothing_stored(storage):
    rows = encounter_rows(30, seed=3).assign(encounter_id="unknown")
    result = ingest.ingest_batch(storage, Batch(number=4, total_batches=4, rows=rows), source="test")
    assert (result.received, result.raw_rows, result.clean_rows, result.rejected) == (30, 0, 0, 30)
    assert storage.batch_log()[["status", "rows_stored", "rows_rejected"]].values.tolist() == [[STORED, 0, 30]]
    assert len(storage.quarantine(4)) == 30 and storage.read_clean_batch(4).empty


@pytest.mark.parametrize(
    "change", [lambda rows: rows.drop(columns=["readmitted"]), lambda rows: rows.assign(note="x")],
    ids=["missing column", "extra column"],
)  # fmt: skip
def test_a_batch_with_wrong_columns_is_refused_and_nothing_is_written(storage, change):
    batch = Batch(number=1, total_batches=1, rows=change(encounter_rows(50)))
    with pytest.raises(SchemaError, match="batch refused"):
        ingest.ingest_batch(storage, batch, source="test")
    assert storage.batch_log().empty and storage.read_raw_batch(1).empty and storage.quarantine().empty


def test_validate_and_clean_refuses_wrong_columns_before_any_clean_write():
    with pytest.raises(SchemaError, match=r"missing columns \['gender'\]"):
        ingest.validate_and_clean(encounter_rows(20).drop(columns=["gender"]))


def test_the_stages_chain_through_the_database_as_the_dag_runs_them(storage):
    rows = encounter_rows(90, seed=2)
    rows.loc[3, "readmitted"] = "later"
    rows.loc[4, "encounter_id"] = None
    written = ingest.store_raw(storage, Batch(number=1, total_batches=3, rows=rows), source="test")
    cleaned = ingest.validate_and_clean(storage.read_raw_batch(1))  # a later task reads the raw rows back
    counts = ingest.store_clean(storage, 1, cleaned)
    assert (written.stored, counts.received, counts.stored, counts.rejected) == (89, 90, 88, 2)
    in_memory = ingest.validate_and_clean(written.rows)
    pd.testing.assert_frame_equal(cleaned.clean, in_memory.clean)


def test_ingest_file_stores_every_batch_numbered_as_the_data_api_numbers_them(storage, synthetic_csv):
    results = ingest.ingest_file(storage, synthetic_csv, batch_size=1_500)
    assert [(r.batch_number, r.received, r.clean_rows) for r in results] == [(1, 1_500, 1_500), (2, 1_500, 1_500),
                                                                               (3, 1_000, 1_000)]  # fmt: skip
    pd.testing.assert_frame_equal(storage.read_raw_batch(3), as_served(load_dataset(synthetic_csv).iloc[3_000:]))
    assert storage.stored_batches() == [1, 2, 3]
    assert set(storage.batch_log()["source"]) == {f"file:{synthetic_csv}"}
    assert storage.labelled_encounters().columns.tolist()[: len(schema.COLUMNS)] == list(schema.COLUMNS)
