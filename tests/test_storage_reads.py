"""Storage reads (readmission.storage.reads): batches raw and clean, and the labelled encounters models train on."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from readmission import schema
from readmission.clean import CLEAN_COLUMNS, INTEGER_COLUMNS, clean_rows, typed_encounters
from readmission.features import EncounterFeatures
from tests.factories import encounter_rows, write_raw_and_clean


def test_clean_rows_hold_the_typed_encounter_columns_and_split(storage):
    frame = encounter_rows(120, seed=3)
    frame.loc[0, ["race", "diag_1", "medical_specialty"]] = ["?", None, ""]
    write_raw_and_clean(storage, 1, frame)
    stored = storage.read_clean_batch(1)
    assert stored.columns.tolist() == [*CLEAN_COLUMNS, "batch_number", "row_in_batch"]
    pd.testing.assert_frame_equal(stored[list(CLEAN_COLUMNS)], clean_rows(frame))
    assert all(stored[column].dtype == "int64" for column in INTEGER_COLUMNS)
    assert stored.loc[0, ["race", "diag_1", "medical_specialty"]].tolist() == [None, None, ""]
    assert stored.loc[0, "max_glu_serum"] == frame.loc[0, "max_glu_serum"]  # "None" is a value: not taken
    assert stored["batch_number"].eq(1).all() and stored["row_in_batch"].tolist() == list(range(120))
    with storage.clean.connect() as conn:
        for split in ("train", "validation", "test"):
            in_view = conn.execute(sa.text(f"SELECT COUNT(*) FROM {split}_data")).scalar()
            assert in_view == (stored["split"] == split).sum() > 0


def test_the_features_of_a_batchs_clean_rows_are_those_of_its_raw_rows(storage):
    frame = encounter_rows(1_500, seed=30)  # above the size where the features go column by column
    frame.loc[:9, "race"] = [None, "?", "", "Martian", "Other", "caucasian", "Asian", None, "?", "Hispanic"]
    frame.loc[10:13, ["payer_code", "weight", "diag_2"]] = [
        ["?", "?", "?"],
        [None, None, None],
        ["", "", ""],
        ["XX", ">200", "V57"],
    ]
    frame.loc[14:16, "admission_type_id"] = ["99", "0", "7"]  # codes the features know nothing of
    frame.loc[17, "readmitted"] = "soon"  # quarantined: not in the clean rows
    write_raw_and_clean(storage, 1, frame)
    clean = storage.read_clean_batch(1)
    raw = storage.read_raw_batch(1)
    raw = raw[raw["encounter_id"].astype("int64").isin(clean["encounter_id"])].reset_index(drop=True)
    assert len(clean) == len(raw) == 1_499
    features = EncounterFeatures()
    pd.testing.assert_frame_equal(features.transform(clean), features.transform(raw))
    few = [0, 1, 2, 10, 11, 12, 13]  # and row by row, as the inference API transforms a request
    pd.testing.assert_frame_equal(
        features.transform(clean.iloc[few].reset_index(drop=True)),
        features.transform(raw.iloc[few].reset_index(drop=True)),
    )


def test_labelled_encounters_are_the_typed_columns_of_clean_encounters_with_their_split(storage):
    first = encounter_rows(90, seed=20)
    first.loc[4, "readmitted"] = "unknown"
    second = encounter_rows(50, seed=21, first_encounter_id=7_000)
    write_raw_and_clean(storage, 2, second)  # stored first: the rows still come by batch
    write_raw_and_clean(storage, 1, first)
    labelled = storage.labelled_encounters()
    assert labelled.columns.tolist() == [*schema.COLUMNS, "split", "batch_number"]
    expected = typed_encounters(pd.concat([first.drop(index=4), second], ignore_index=True))
    pd.testing.assert_frame_equal(labelled[list(schema.COLUMNS)], expected)
    assert labelled["batch_number"].tolist() == [1] * 89 + [2] * 50
    clean = pd.concat([storage.read_clean_batch(1), storage.read_clean_batch(2)]).set_index("encounter_id")["split"]
    assert labelled["split"].tolist() == clean.loc[labelled["encounter_id"]].tolist()
    test_only = storage.labelled_encounters(splits=("test",))
    assert set(test_only["split"]) == {"test"}
    pd.testing.assert_frame_equal(test_only, labelled[labelled["split"] == "test"].reset_index(drop=True))
    with pytest.raises(ValueError, match="unknown splits"):
        storage.labelled_encounters(splits=("holdout",))


def test_nothing_stored_reads_as_empty(storage):
    assert storage.labelled_encounters().columns.tolist() == [*schema.COLUMNS, "split", "batch_number"]
    assert storage.labelled_encounters().empty and storage.stored_batches() == []
    assert storage.read_clean_batch(1).empty and storage.quarantine().empty
