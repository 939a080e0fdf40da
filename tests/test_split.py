"""Split by patient: stable, 70 / 15 / 15, the same whichever batch brings a patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from readmission.split import SPLITS, assign_split


def test_patients_are_split_70_15_15():
    patients = pd.Series(np.arange(5_000_000, 5_100_000).astype(str))
    shares = assign_split(patients).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.01)
    assert shares["validation"] == pytest.approx(0.15, abs=0.01)
    assert shares["test"] == pytest.approx(0.15, abs=0.01)


def test_every_encounter_of_a_patient_gets_the_patient_split():
    rng = np.random.default_rng(3)
    patients = pd.Series(rng.integers(1, 500, size=5_000).astype(str))
    splits = assign_split(patients)
    assert (splits.groupby(patients).nunique() == 1).all()
    assert set(splits) == set(SPLITS)


def test_a_patient_split_does_not_depend_on_the_batch_order_or_spelling():
    first = assign_split(pd.Series(["1013", "1000", "1007"]))
    later = assign_split(pd.Series([1007, "42", "01013", 1000], index=[10, 11, 12, 13]))
    assert later.to_dict() == {10: first[2], 11: assign_split(pd.Series(["42"]))[0], 12: first[0], 13: first[1]}


def test_the_split_of_a_patient_never_changes():
    # Pinned once: a change here would move patients between train and test across releases.
    patients = ["1000", "1001", "1007", "1013", "1024", "82442376", "55629189"]
    assert assign_split(pd.Series(patients)).tolist() == [
        "train",
        "train",
        "validation",
        "test",
        "validation",
        "test",
        "train",
    ]


def test_a_patient_number_that_is_not_a_whole_number_is_refused():
    with pytest.raises(ValueError, match=r"patient_nbr must be a whole number, got \['12a', None\]"):
        assign_split(pd.Series(["1", "12a", None], dtype=object))


def test_the_result_keeps_the_index_and_handles_no_rows():
    assert assign_split(pd.Series([], dtype=object)).empty
    assert assign_split(pd.Series(["5"], index=["row"])).index.tolist() == ["row"]
