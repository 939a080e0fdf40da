"""Storage tables (readmission.storage.tables): creating them, checking an existing database, migrating the clean table."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from readmission import ingest
from readmission.storage import REBUILD_CLEAN, Storage, StorageError, diabetes_clean
from tests.factories import (
    assert_same_contents,
    encounter_rows,
    old_layout_clean_table,
    store_contents,
    write_raw_and_clean,
)


def test_creating_the_schema_twice_is_harmless(storage):
    write_raw_and_clean(storage, 1, encounter_rows(60, seed=18))
    before = store_contents(storage)
    storage.create_schema()
    assert_same_contents(before, store_contents(storage))
    assert {"train_data", "validation_data", "test_data"} <= set(sa.inspect(storage.clean).get_view_names())


def test_creating_the_schema_adds_an_index_an_existing_table_lacks(storage):
    def clean_indexes() -> set[str]:
        return {index["name"] for index in sa.inspect(storage.clean).get_indexes("diabetes_clean")}

    assert "ix_diabetes_clean_split" in clean_indexes()
    next(index for index in diabetes_clean.indexes if index.name == "ix_diabetes_clean_split").drop(storage.clean)
    assert "ix_diabetes_clean_split" not in clean_indexes()
    storage.create_schema()
    assert "ix_diabetes_clean_split" in clean_indexes()


def test_a_table_that_does_not_match_this_code_is_reported(storage):
    with storage.raw.begin() as conn:
        conn.execute(sa.text("ALTER TABLE quarantine DROP COLUMN raw_row"))
    with pytest.raises(StorageError, match=r"table quarantine .* missing \['raw_row'\], unexpected \[\]; migrate"):
        storage.create_schema()


def test_a_clean_table_of_the_older_layout_is_refused_until_rebuilt_from_the_raw_rows(storage):
    first, second = encounter_rows(120, seed=31), encounter_rows(80, seed=32, first_encounter_id=9_000)
    first.loc[5, "readmitted"] = "maybe"  # quarantined by validation: still quarantined once rebuilt
    write_raw_and_clean(storage, 1, first)
    write_raw_and_clean(storage, 2, second)
    predictions = pd.DataFrame({"encounter_id": [9_000], "probability": [0.5], "prediction": [1], "label": [0]})
    storage.write_predictions(2, "model", "1", predictions)
    before = store_contents(storage)
    old_layout_clean_table(storage)
    with pytest.raises(StorageError, match=rf"unexpected \['a1c_level', 'readmitted_any'\].*`{REBUILD_CLEAN}`"):
        storage.create_schema()
    rebuilt = ingest.rebuild_clean(storage)
    assert [(c.batch_number, c.received, c.stored, c.rejected) for c in rebuilt] == [(1, 120, 119, 1), (2, 80, 80, 0)]
    assert_same_contents(before, store_contents(storage))
    storage.create_schema()
    assert {"train_data", "validation_data", "test_data"} <= set(sa.inspect(storage.clean).get_view_names())


def test_storage_from_settings_uses_the_embedded_sqlite_files(make_settings):
    settings = make_settings()
    storage = Storage.from_settings(settings)
    storage.create_schema()
    assert (settings.data_dir / "raw_data_db.sqlite").is_file() and (
        settings.data_dir / "clean_data_db.sqlite"
    ).is_file()
    assert storage.chunk_rows == settings.insert_chunk_rows
    storage.dispose()
