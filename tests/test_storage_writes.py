"""Storage writes (readmission.storage.writes) on SQLite and on a real MariaDB server: atomic, idempotent batch writes."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pandas as pd
import pytest
import sqlalchemy as sa

from readmission.clean import clean_rows
from readmission.storage import RAW_STORED, STORED, StorageError, batch_checksum
from readmission.validation import SchemaError, split_valid_rows
from tests.factories import (
    assert_same_contents,
    cleaned,
    encounter_rows,
    store_contents,
    write_raw_and_clean,
    writes_rows_into,
)

# A NOT NULL column given NULL: INSERT fails with IntegrityError, LOAD DATA LOCAL (which only
# warns) with StorageError; both name the column.
REFUSED_ROWS = (sa.exc.IntegrityError, StorageError)


@contextmanager
def failing_insert(engine: sa.Engine, table: str, on_call: int):
    """Make the `on_call`-th statement writing rows into `table` fail, as a lost connection would."""
    calls = 0

    def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
        nonlocal calls
        if writes_rows_into(statement, table):
            calls += 1
            if calls == on_call:
                raise RuntimeError(f"injected failure on INSERT number {on_call} into {table}")

    sa.event.listen(engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", before_cursor_execute)


def test_a_batch_is_stored_raw_exactly_as_it_came(storage):
    frame = encounter_rows(100, seed=1)
    frame.loc[3, "medical_specialty"] = None
    written = storage.write_raw(1, frame, source="data-api:http://example")
    assert (written.received, written.stored, written.rejected) == (100, 100, 0)
    stored = storage.read_raw_batch(1)
    pd.testing.assert_frame_equal(stored.astype(object), frame.astype(object), check_dtype=False)
    assert stored.loc[3, "medical_specialty"] is None or pd.isna(stored.loc[3, "medical_specialty"])
    log = storage.batch_log().iloc[0]
    assert (log.batch_number, log.source, log.status) == (1, "data-api:http://example", RAW_STORED)
    assert (log.rows_received, log.rows_stored, log.rows_rejected) == (100, 100, 0)
    assert log.checksum == batch_checksum(frame)


def test_rewriting_a_batch_changes_nothing(storage):
    first, second = encounter_rows(120, seed=4), encounter_rows(90, seed=5, first_encounter_id=50_000)
    first.loc[[5, 6], "encounter_id"] = ["bad", None]  # quarantined by the raw write
    first.loc[7, "readmitted"] = "maybe"  # quarantined by validation
    write_raw_and_clean(storage, 1, first)
    write_raw_and_clean(storage, 2, second)
    before = store_contents(storage)
    assert before["quarantine"]["batch_number"].tolist() == [1, 1, 1]
    write_raw_and_clean(storage, 1, first)
    write_raw_and_clean(storage, 2, second)
    assert_same_contents(before, store_contents(storage))


def test_rewriting_a_batch_with_new_content_replaces_it(storage):
    write_raw_and_clean(storage, 1, encounter_rows(120, seed=6))
    changed = encounter_rows(120, seed=7, first_encounter_id=9_000)
    write_raw_and_clean(storage, 1, changed)
    assert storage.read_raw_batch(1)["encounter_id"].tolist() == changed["encounter_id"].tolist()
    assert len(storage.read_clean_batch(1)) == 120
    assert storage.batch_log()["checksum"].tolist() == [batch_checksum(changed)]


def test_a_failure_in_the_middle_of_a_raw_write_writes_nothing(storage):
    write_raw_and_clean(storage, 1, encounter_rows(120, seed=8))
    before = store_contents(storage)
    replacement = encounter_rows(120, seed=9, first_encounter_id=20_000)
    batch_3 = encounter_rows(120, seed=10, first_encounter_id=40_000)
    batch_3.loc[0, "encounter_id"] = "x"  # a quarantine row that must not survive either
    for number, frame in ((1, replacement), (3, batch_3)):
        with failing_insert(storage.raw, "diabetes_raw", on_call=2), pytest.raises(RuntimeError, match="injected"):
            storage.write_raw(number, frame, source="test")  # 120 rows: 3 INSERTs of 40, the 2nd fails
    assert_same_contents(before, store_contents(storage))


def test_a_failure_in_the_last_chunk_of_a_clean_write_writes_nothing(storage):
    write_raw_and_clean(storage, 1, encounter_rows(120, seed=11))
    raw = storage.write_raw(2, encounter_rows(120, seed=12, first_encounter_id=30_000), source="test")
    before = store_contents(storage)
    valid, quarantined = split_valid_rows(raw.rows)
    clean = clean_rows(valid)
    clean.loc[clean.index[-1], "split"] = None  # violates NOT NULL in the last chunk of 40 rows
    with pytest.raises(REFUSED_ROWS, match="split"):
        storage.write_clean(2, clean, quarantined)
    assert_same_contents(before, store_contents(storage))
    assert storage.batch_log().set_index("batch_number")["status"].to_dict() == {1: STORED, 2: RAW_STORED}
    assert storage.stored_batches() == [1]


def test_writing_both_databases_at_once_stores_what_the_two_writes_in_turn_store(storage):
    first, second = encounter_rows(120, seed=23), encounter_rows(90, seed=24, first_encounter_id=60_000)
    first.loc[[2, 3], ["encounter_id", "readmitted"]] = [["x", "NO"], ["1003", "soon"]]
    second.loc[0, "encounter_id"] = first.loc[50, "encounter_id"]  # held by batch 1
    written = storage.write_batch(1, first, "test", cleaned)
    assert (written.raw.stored, written.raw.rejected, written.final.stored, written.final.rejected) == (119, 1, 118, 2)
    assert storage.write_batch(2, second, "test", cleaned).final.rejected == 1
    at_once = store_contents(storage)
    write_raw_and_clean(storage, 1, first)
    write_raw_and_clean(storage, 2, second)
    assert_same_contents(at_once, store_contents(storage))


def test_a_failure_while_writing_both_databases_at_once_writes_nothing(storage):
    write_raw_and_clean(storage, 1, encounter_rows(120, seed=25))
    before = store_contents(storage)
    batch = encounter_rows(120, seed=26, first_encounter_id=70_000)

    def unfinished(raw_rows):
        clean, quarantined = cleaned(raw_rows)
        return clean.assign(split=[*clean["split"][:-1], None]), quarantined  # NOT NULL fails in the last chunk

    def broken(raw_rows):
        raise ValueError("the cleaning failed")

    with failing_insert(storage.raw, "diabetes_raw", on_call=2), pytest.raises(RuntimeError, match="injected"):
        storage.write_batch(2, batch, "test", cleaned)
    with pytest.raises(REFUSED_ROWS, match="split"):
        storage.write_batch(2, batch, "test", unfinished)
    with pytest.raises(ValueError, match="the cleaning failed"):
        storage.write_batch(2, batch, "test", broken)
    with pytest.raises(StorageError, match="do not account for"):
        storage.write_batch(2, batch, "test", lambda rows: cleaned(rows.iloc[1:]))
    assert_same_contents(before, store_contents(storage))


def test_rows_that_cannot_be_keyed_or_validated_are_quarantined_with_reasons(storage):
    frame = encounter_rows(90, seed=13)
    frame.loc[0, "encounter_id"] = "E-17"
    repeated = frame.loc[1, "encounter_id"] = frame.loc[2, "encounter_id"]
    frame.loc[3, "num_procedures"] = "11"
    raw, final = write_raw_and_clean(storage, 1, frame)
    assert (raw.stored, raw.rejected) == (88, 2)
    assert (final.received, final.stored, final.rejected) == (90, 87, 3)
    quarantine = storage.quarantine(1)
    assert quarantine[["stage", "encounter_id", "reason"]].values.tolist() == [
        ["raw", "E-17", "encounter_id must be a whole number, got 'E-17'"],
        ["raw", repeated, f"the same encounter_id appears earlier in the batch: '{repeated}'"],
        ["clean", frame.loc[3, "encounter_id"], "num_procedures must be a whole number from 0 to 10, got '11'"],
    ]
    assert json.loads(quarantine["raw_row"].iloc[2]) == frame.loc[3].to_dict()
    log = storage.batch_log().iloc[0]
    assert (log.rows_received, log.rows_stored, log.rows_rejected, log.status) == (90, 87, 3, STORED)
    assert len(storage.read_raw_batch(1)) == 88 and len(storage.read_clean_batch(1)) == 87


def test_an_encounter_already_stored_by_another_batch_is_quarantined_not_duplicated(storage):
    first = encounter_rows(90, seed=14)
    second = encounter_rows(90, seed=15, first_encounter_id=5_000)
    second.loc[[0, 1], "encounter_id"] = first.loc[[10, 11], "encounter_id"].to_numpy()
    write_raw_and_clean(storage, 1, first)
    _, final = write_raw_and_clean(storage, 2, second)
    assert (final.stored, final.rejected) == (88, 2)
    assert storage.quarantine(2)["reason"].tolist() == [
        f"encounter_id '{first.loc[10, 'encounter_id']}' is already stored by batch 1",
        f"encounter_id '{first.loc[11, 'encounter_id']}' is already stored by batch 1",
    ]
    pd.testing.assert_frame_equal(storage.read_raw_batch(1).astype(object), first.astype(object), check_dtype=False)
    write_raw_and_clean(storage, 1, first)  # re-running batch 1 keeps its rows: they are its own
    assert len(storage.read_raw_batch(1)) == 90


def test_a_patient_seen_in_two_batches_lands_in_the_same_split(storage):
    first = encounter_rows(120, seed=16, patients=30)
    second = encounter_rows(120, seed=17, first_encounter_id=8_000, patients=30)
    second["patient_nbr"] = first["patient_nbr"].sample(frac=1, random_state=0).to_numpy()
    write_raw_and_clean(storage, 1, first)
    write_raw_and_clean(storage, 2, second)
    clean = pd.concat([storage.read_clean_batch(1), storage.read_clean_batch(2)])
    assert clean["batch_number"].nunique() == 2
    assert (clean.groupby("patient_nbr")["split"].nunique() == 1).all()


def test_a_batch_with_wrong_columns_is_refused_and_nothing_is_written(storage):
    with pytest.raises(SchemaError, match="missing columns"):
        storage.write_raw(1, encounter_rows(50).drop(columns=["diag_2"]), source="test")
    assert storage.batch_log().empty and storage.read_raw_batch(1).empty


def test_clean_rows_that_do_not_account_for_the_raw_rows_are_refused(storage):
    raw = storage.write_raw(1, encounter_rows(50, seed=19), source="test")
    valid, quarantined = split_valid_rows(raw.rows)
    with pytest.raises(StorageError, match="49 clean and 0 quarantined rows do not account for its 50 raw rows"):
        storage.write_clean(1, clean_rows(valid.iloc[1:]), quarantined)
    with pytest.raises(StorageError, match="batch 2 has no raw write"):
        storage.write_clean(2, clean_rows(valid), quarantined)
    with pytest.raises(StorageError, match=r"lack the columns \['split'\]"):
        storage.write_clean(1, clean_rows(valid).drop(columns="split"), quarantined)
    strangers = clean_rows(valid).assign(encounter_id=lambda rows: rows["encounter_id"] + 1_000_000)
    with pytest.raises(StorageError, match="clean rows for encounters it did not store raw"):
        storage.write_clean(1, strangers, quarantined)
    assert storage.read_clean_batch(1).empty


def test_rewriting_a_model_versions_predictions_replaces_them_and_keeps_other_versions(storage):
    def predictions(probability: float) -> pd.DataFrame:
        return pd.DataFrame(
            {"encounter_id": [11, 12, 13], "probability": probability, "prediction": [0, 1, 1], "label": [0, 1, 0]}
        )

    assert storage.write_predictions(1, "model", "1", predictions(0.25)) == 3
    storage.write_predictions(1, "model", "2", predictions(0.5))
    storage.write_predictions(1, "model", "1", predictions(0.75))
    stored = store_contents(storage)["predictions"]
    assert len(stored) == 6 and set(stored["batch_number"]) == {1} and set(stored["model_name"]) == {"model"}
    assert stored.groupby("model_version")["probability"].unique().map(list).to_dict() == {"1": [0.75], "2": [0.5]}
    assert stored.loc[stored["model_version"] == "1", ["encounter_id", "prediction", "label"]].values.tolist() == [
        [11, 0, 0],
        [12, 1, 1],
        [13, 1, 0],
    ]
