"""Validation before storage: batches refused as a whole, rows quarantined with a reason."""

from __future__ import annotations

import pandas as pd
import pytest

from readmission import encounter_columns
from readmission.validation import SchemaError, key_problems, split_valid_rows, validate_columns
from tests.factories import encounter_rows


@pytest.fixture
def batch() -> pd.DataFrame:
    return encounter_rows(200, seed=1)


def test_a_batch_with_the_source_columns_in_any_order_is_accepted(batch):
    validate_columns(batch)
    validate_columns(batch[list(reversed(encounter_columns.COLUMNS))])


def test_missing_columns_are_named(batch):
    with pytest.raises(SchemaError, match=r"missing columns \['A1Cresult', 'readmitted'\]"):
        validate_columns(batch.drop(columns=["A1Cresult", "readmitted"]))


def test_unexpected_columns_are_refused_and_named(batch):
    with pytest.raises(SchemaError, match=r"unexpected columns \['hospital'\]"):
        validate_columns(batch.assign(hospital="A"))


def test_repeated_columns_are_refused(batch):
    with pytest.raises(SchemaError, match=r"repeated columns \['race'\]"):
        validate_columns(pd.concat([batch, batch[["race"]]], axis=1))


def test_split_valid_rows_refuses_a_batch_with_wrong_columns(batch):
    with pytest.raises(SchemaError):
        split_valid_rows(batch.drop(columns=["gender"]))


def test_a_valid_batch_passes_whole(batch):
    valid, quarantined = split_valid_rows(batch)
    pd.testing.assert_frame_equal(valid, batch)
    assert quarantined.empty and "reason" in quarantined.columns


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("encounter_id", None, "encounter_id must be a whole number, got nothing"),
        ("encounter_id", "abc", "encounter_id must be a whole number, got 'abc'"),
        ("encounter_id", "12.5", "encounter_id must be a whole number, got '12.5'"),
        ("encounter_id", "-4", "encounter_id must be a whole number, got '-4'"),
        ("patient_nbr", "?", "patient_nbr must be a whole number, got '?'"),
        ("patient_nbr", None, "patient_nbr must be a whole number, got nothing"),
        ("time_in_hospital", "0", "time_in_hospital must be a whole number from 1 to 14, got '0'"),
        ("time_in_hospital", "15", "time_in_hospital must be a whole number from 1 to 14, got '15'"),
        ("num_lab_procedures", "201", "num_lab_procedures must be a whole number from 0 to 200, got '201'"),
        ("num_procedures", "-1", "num_procedures must be a whole number from 0 to 10, got '-1'"),
        ("num_medications", "2.5", "num_medications must be a whole number from 0 to 100, got '2.5'"),
        ("number_outpatient", "many", "number_outpatient must be a whole number from 0 to 100, got 'many'"),
        ("number_emergency", None, "number_emergency must be a whole number from 0 to 100, got nothing"),
        ("number_inpatient", "51", "number_inpatient must be a whole number from 0 to 50, got '51'"),
        ("number_diagnoses", "0", "number_diagnoses must be a whole number from 1 to 20, got '0'"),
        ("readmitted", "YES", "readmitted must be one of 'NO', '>30', '<30', got 'YES'"),
        ("readmitted", None, "readmitted must be one of 'NO', '>30', '<30', got nothing"),
    ],
)
def test_a_bad_cell_quarantines_its_row_with_a_reason_naming_column_and_value(batch, column, value, reason):
    batch.loc[7, column] = value
    valid, quarantined = split_valid_rows(batch)
    assert quarantined.index.tolist() == [7]
    assert quarantined.loc[7, "reason"] == reason
    assert len(valid) == len(batch) - 1 and 7 not in valid.index


def test_every_problem_of_a_row_is_named(batch):
    batch.loc[3, ["time_in_hospital", "readmitted"]] = ["99", "maybe"]
    _, quarantined = split_valid_rows(batch)
    assert quarantined.loc[3, "reason"] == (
        "time_in_hospital must be a whole number from 1 to 14, got '99'; "
        "readmitted must be one of 'NO', '>30', '<30', got 'maybe'"
    )


def test_the_bounds_of_every_count_range_are_accepted(batch):
    for row, (column, bounds) in enumerate(encounter_columns.COUNT_RANGES.items()):
        batch.loc[2 * row, column], batch.loc[2 * row + 1, column] = (str(b) for b in bounds)
    _, quarantined = split_valid_rows(batch)
    assert quarantined.empty


def test_a_repeated_encounter_id_keeps_its_first_row(batch):
    batch.loc[[10, 50, 90], "encounter_id"] = "777"
    valid, quarantined = split_valid_rows(batch)
    assert quarantined.index.tolist() == [50, 90]
    assert set(quarantined["reason"]) == {"the same encounter_id appears earlier in the batch: '777'"}
    assert 10 in valid.index


def test_valid_and_quarantined_rows_partition_the_batch(batch):
    batch.loc[[1, 4, 9], "readmitted"] = "?"
    valid, quarantined = split_valid_rows(batch)
    assert sorted([*valid.index, *quarantined.index]) == batch.index.tolist()
    pd.testing.assert_frame_equal(quarantined.drop(columns="reason"), batch.loc[[1, 4, 9]])


def test_numbers_given_as_numbers_are_valid(batch):
    numeric = batch.astype(dict.fromkeys((*encounter_columns.ID_COLUMNS, *encounter_columns.COUNT_RANGES), "int64"))
    valid, quarantined = split_valid_rows(numeric)
    assert quarantined.empty and len(valid) == len(batch)


def test_an_empty_batch_is_valid_and_empty():
    empty = pd.DataFrame(columns=list(encounter_columns.COLUMNS), dtype=object)
    valid, quarantined = split_valid_rows(empty)
    assert valid.empty and quarantined.empty


def test_key_problems_only_concern_the_encounter_id(batch):
    batch.loc[0, "encounter_id"] = "x"
    batch.loc[[1, 2], "encounter_id"] = batch.loc[3, "encounter_id"]
    batch.loc[4, "readmitted"] = "maybe"
    problems = key_problems(batch)
    assert problems[problems != ""].index.tolist() == [0, 2, 3]  # row 1 is the first of the repeated id
