"""Reading batch requests: the fast JSON decoder accepts exactly what the pydantic `Encounter` model accepts,
and a CSV in the data set's format reads as the same input rows as the same encounters sent as JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from readmission.dataset import synthetic_dataset
from readmission.features import input_matrix
from readmission.loadtest import request_body
from readmission.serving import batch_input
from readmission.serving.api_models import FIELDS, IGNORED_COLUMNS, MAX_TEXT_LENGTH
from readmission.serving.batch_input import FAST_DECODER, InvalidBatch, encounters_from_csv, encounters_from_json

ROWS = synthetic_dataset(30, seed=5)  # the data set's 50 columns, as text
VALID = [request_body(row) for row in ROWS.to_dict(orient="records")]
VOCABULARY = sorted({v for spec in FIELDS.values() for v in spec.vocabulary or ()})
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 130),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from([0.0, 1.0, 3.0]),
    st.sampled_from(VOCABULARY),
    st.text(max_size=MAX_TEXT_LENGTH + 3),
    st.sampled_from(["3", "1", "", "?", "NaN", "<30"]),
    st.lists(st.integers(0, 3), max_size=2),
)
KEYS = [*FIELDS, *IGNORED_COLUMNS, "favourite_colour"]


@st.composite
def encounter_objects(draw) -> dict:
    """A valid encounter with a few fields changed to odd values, dropped, or added."""
    encounter = dict(draw(st.sampled_from(VALID)))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        if draw(st.booleans()):
            encounter[key] = draw(ODD_VALUES)
        else:
            encounter.pop(key, None)
    return encounter


def pydantic_verdict(body: bytes) -> np.ndarray | None:
    """The rows the pydantic model reads from `body`, or None when it refuses it."""
    try:
        return batch_input._explained(body, max_rows=10)
    except (InvalidBatch, batch_input.BatchTooLarge):
        return None


def fast_verdict(body: bytes) -> np.ndarray | None:
    try:
        encounters = FAST_DECODER.decode(body)
    except batch_input.msgspec.DecodeError:
        return None
    return np.array([batch_input._input_values(e) for e in encounters], dtype=object).reshape(len(encounters), -1)


def typed(table: np.ndarray) -> list[list[tuple[type, object]]]:
    return [[(type(v), v) for v in row] for row in table.tolist()]  # 1 and True are equal, but not the same input


@given(st.lists(encounter_objects(), min_size=1, max_size=3))
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_decoder_accepts_and_reads_exactly_what_the_pydantic_model_does(encounters):
    body = json.dumps(encounters).encode()
    fast, slow = fast_verdict(body), pydantic_verdict(body)
    assert (fast is None) == (slow is None), f"fast {'refused' if fast is None else 'accepted'}: {body[:300]!r}"
    if fast is not None:
        assert typed(fast) == typed(slow)


def test_a_valid_batch_never_needs_the_pydantic_model(monkeypatch):
    monkeypatch.setattr(batch_input, "_explained", lambda body, max_rows: pytest.fail("pydantic was asked"))
    table = encounters_from_json(json.dumps(VALID).encode(), max_rows=100)
    assert table.shape == (len(VALID), len(FIELDS))
    assert table[:, list(FIELDS).index("age")].tolist() == [row["age"] for row in VALID]


def test_a_refused_batch_is_explained_by_the_pydantic_model_row_by_row():
    rows = [dict(row) for row in VALID[:4]]
    rows[1]["number_inpatient"], rows[3]["gender"] = True, "Martian"
    with pytest.raises(InvalidBatch) as refused:
        encounters_from_json(json.dumps(rows).encode(), max_rows=100)
    assert [e["loc"] for e in refused.value.errors] == [["body", 1, "number_inpatient"], ["body", 3, "gender"]]


@pytest.mark.parametrize(
    "body", [b"", b"{}", b"[]", b"[1]", b'[{"race": "Caucasian"}] trailing', b"[" + b"{}," * 5 + b"{}]"]
)
def test_what_is_not_a_list_of_encounters_is_refused_by_name(body):
    with pytest.raises(InvalidBatch) as refused:
        encounters_from_json(body, max_rows=100)
    assert refused.value.errors and all(e["loc"][0] == "body" for e in refused.value.errors)


def test_more_rows_than_the_limit_are_too_large_even_when_every_row_is_valid():
    with pytest.raises(batch_input.BatchTooLarge, match="31 encounters"):
        encounters_from_json(json.dumps(VALID + VALID[:1]).encode(), max_rows=30)


# --- CSV --------------------------------------------------------------------------------


def csv_errors(text: str) -> list[dict]:
    with pytest.raises(InvalidBatch) as refused:
        encounters_from_csv(text.encode(), max_rows=100)
    return refused.value.errors


def test_a_csv_reads_as_the_same_rows_as_the_same_encounters_sent_as_json():
    from_csv = input_matrix(encounters_from_csv(ROWS.to_csv(index=False).encode(), max_rows=100))
    assert typed(from_csv) == typed(encounters_from_json(json.dumps(VALID).encode(), max_rows=100))


def test_empty_csv_cells_and_absent_optional_columns_take_the_missing_meaning():
    rows = ROWS.head(3).drop(columns=["weight", "metformin"]).assign(A1Cresult=["", ">8", ""], diag_3=["", "428", ""])
    table = input_matrix(encounters_from_csv(rows.to_csv(index=False).encode(), max_rows=100))
    column = {name: table[:, i].tolist() for i, name in enumerate(FIELDS)}
    assert column["weight"] == [FIELDS["weight"].default] * 3 and column["metformin"] == ["No"] * 3
    assert column["A1Cresult"] == ["None", ">8", "None"] and column["diag_3"] == ["?", "428", "?"]


def test_numbers_in_a_csv_are_read_as_whole_numbers_of_their_range():
    rows = ROWS.head(2).assign(time_in_hospital=["3", "3.0"], admission_type_id=["1", "2"])
    table = input_matrix(encounters_from_csv(rows.to_csv(index=False).encode(), max_rows=100))
    assert typed(table[:, [list(FIELDS).index("time_in_hospital"), list(FIELDS).index("admission_type_id")]]) == [
        [(int, 3), (int, 1)],
        [(int, 3), (int, 2)],
    ]


def test_each_refused_csv_cell_is_named_by_row_and_column_with_its_line():
    rows = ROWS.head(4).assign(gender=["Female", "Martian", "Male", "Female"], time_in_hospital=["3", "3", "", "99"])
    errors = csv_errors(rows.to_csv(index=False))
    assert [e["loc"] for e in errors] == [
        ["body", 1, "gender"],
        ["body", 2, "time_in_hospital"],
        ["body", 3, "time_in_hospital"],
    ]
    assert "'Martian' is not allowed (CSV line 3)" in errors[0]["msg"]
    assert errors[1]["msg"].startswith("required value is missing (CSV line 4)")
    assert "'99' is not allowed" in errors[2]["msg"] and "from 1 to 14" in errors[2]["msg"]


def test_a_csv_with_every_row_wrong_names_the_first_errors_and_counts_the_rest():
    errors = csv_errors(ROWS.assign(gender="Martian").to_csv(index=False))
    assert len(errors) == batch_input.MAX_ERRORS + 1
    assert errors[-1]["msg"] == f"... and {len(ROWS) - batch_input.MAX_ERRORS} more errors"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not a CSV"),
        ("race,age\n", "holds no encounters"),
        ("race,race\nCaucasian,Caucasian\n", "more than once"),
        (ROWS.head(2).to_csv(index=False) + "Caucasian,Female\n", "not a CSV"),
    ],
)
def test_what_is_not_a_csv_of_encounters_is_refused_saying_why(text, problem):
    assert problem in " ".join(e["msg"] for e in csv_errors(text))


def test_a_row_of_the_wrong_length_is_refused_without_echoing_its_cells():
    (error,) = csv_errors(ROWS.head(2).to_csv(index=False) + "Caucasian,Female,[70-80)\n")
    assert "Expected 50 columns, got 3" in error["msg"]
    assert "Caucasian" not in error["msg"] and "70-80" not in error["msg"]


def test_text_that_is_not_utf8_is_refused_as_not_a_csv():
    body = ROWS.head(2).to_csv(index=False).replace("Caucasian", "Cauc\u00e1sian", 1).encode("latin-1")
    with pytest.raises(InvalidBatch, match="not a CSV"):
        encounters_from_csv(body, max_rows=100)


def test_a_csv_of_more_rows_than_the_limit_is_too_large():
    with pytest.raises(batch_input.BatchTooLarge, match="30 encounters"):
        encounters_from_csv(ROWS.to_csv(index=False).encode(), max_rows=29)
