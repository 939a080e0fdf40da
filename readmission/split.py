"""Split by patient: a stable hash of `patient_nbr` puts each patient in train, validation or test.

The hash is BLAKE2b of the patient number written canonically (`str(int(patient_nbr))`),
so it depends on nothing but the number: not on the batch, the row order, the Python
process (`hash()` is salted per process) or the pandas version. A patient therefore lands
in the same split whichever batch brings them, and no patient is in two splits.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from readmission.validation import whole_numbers

SPLITS = ("train", "validation", "test")
SHARES = (0.70, 0.15, 0.15)
_BOUNDS = np.cumsum(SHARES)[:-1]  # position < 0.70 -> train, < 0.85 -> validation, else test
_PERSON = b"split-v1"  # BLAKE2b personalization: changing it reshuffles every patient


def patient_position(patient: int) -> float:
    """The patient's place in [0, 1): BLAKE2b-64 of the canonical number, over 2**64."""
    digest = hashlib.blake2b(str(int(patient)).encode(), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_split(patient_nbr: pd.Series) -> pd.Series:
    """The split (train / validation / test) of each row's patient, hashing each distinct patient once.

    Raises ValueError naming values that are not whole numbers (validation quarantines those first).
    """
    numbers = whole_numbers(patient_nbr)
    if numbers.isna().any():
        raise ValueError(f"patient_nbr must be a whole number, got {patient_nbr[numbers.isna()].head(5).tolist()}")
    codes, patients = pd.factorize(numbers.to_numpy(dtype=np.int64))
    positions = np.fromiter(map(patient_position, patients.tolist()), dtype=float, count=len(patients))
    splits = np.asarray(SPLITS, dtype=object)[np.searchsorted(_BOUNDS, positions, side="right")]
    return pd.Series(splits[codes], index=patient_nbr.index, name="split", dtype=object)
