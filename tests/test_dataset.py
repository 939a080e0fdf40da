"""Reading the UCI CSV exactly (plain, .gz, the UCI .zip, a URL) and the synthetic look-alike."""

from __future__ import annotations

import gzip
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.tree import DecisionTreeClassifier

from readmission import encounter_columns
from readmission.dataset import DatasetError, iter_dataset_chunks, load_dataset, synthetic_dataset, write_synthetic_csv
from readmission.features import EncounterFeatures, target
from readmission.validation import split_valid_rows
from tests.factories import encounter

HEADER = ",".join(encounter_columns.COLUMNS)


def csv_line(**overrides) -> str:
    return ",".join(encounter(**overrides).values())


@pytest.fixture
def csv_text() -> str:
    """Three rows as the UCI file writes them: `?` missing markers, `None` results, one empty cell."""
    rows = [
        csv_line(encounter_id="1", race="?", max_glu_serum="None", A1Cresult=">8"),
        csv_line(encounter_id="2", payer_code="", diag_3="?", max_glu_serum=">300", A1Cresult="None"),
        csv_line(encounter_id="3", medical_specialty="Surgery-Cardiovascular/Thoracic", diag_1="E909"),
    ]
    return "\n".join([HEADER, *rows]) + "\n"


@pytest.fixture
def dataset_files(tmp_path, csv_text) -> dict[str, Path]:
    """The same content as a plain CSV, a gzip file and a UCI-style zip archive."""
    plain = tmp_path / "diabetic_data.csv"
    plain.write_text(csv_text)
    compressed = tmp_path / "diabetic_data.csv.gz"
    compressed.write_bytes(gzip.compress(csv_text.encode()))
    archive = tmp_path / "dataset_diabetes.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("dataset_diabetes/IDs_mapping.csv", "admission_type_id,description\n1,Emergency\n")
        zipped.writestr("dataset_diabetes/diabetic_data.csv", csv_text)
    return {"plain": plain, "gzip": compressed, "zip": archive}


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server on tmp_path; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["plain", "gzip", "zip"])
def test_plain_gzip_and_zip_files_read_the_same(dataset_files, kind):
    frame = load_dataset(dataset_files[kind])
    assert frame.columns.tolist() == list(encounter_columns.COLUMNS)
    pd.testing.assert_frame_equal(frame, load_dataset(dataset_files["plain"]))
    assert frame["encounter_id"].tolist() == ["1", "2", "3"]


def test_the_missing_marker_and_none_stay_strings_and_only_an_empty_cell_is_missing(dataset_files):
    frame = load_dataset(dataset_files["gzip"])
    assert frame.loc[0, "race"] == "?" and frame.loc[1, "diag_3"] == "?"
    assert frame["max_glu_serum"].tolist() == ["None", ">300", "None"]
    assert frame["A1Cresult"].tolist() == [">8", "None", "None"]
    assert pd.isna(frame.loc[1, "payer_code"]) and frame["payer_code"].isna().sum() == 1
    assert frame.loc[2, "medical_specialty"] == "Surgery-Cardiovascular/Thoracic" and frame.loc[2, "diag_1"] == "E909"
    assert frame.loc[0, "time_in_hospital"] == "3"  # numbers stay the text they are in the file


def test_a_url_is_downloaded_and_read(dataset_files, http_folder):
    frame = load_dataset(f"{http_folder}/{dataset_files['zip'].name}")
    pd.testing.assert_frame_equal(frame, load_dataset(dataset_files["plain"]))


def test_unreadable_locations_raise_dataset_error_naming_them(tmp_path, http_folder):
    with pytest.raises(DatasetError, match="data set not found"):
        load_dataset(tmp_path / "absent.csv")
    with pytest.raises(DatasetError, match="cannot download the data set from http"):
        load_dataset(f"{http_folder}/absent.csv.gz")
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("readme.txt", "nothing here")
    with pytest.raises(DatasetError, match="the archive holds no diabetic_data.csv"):
        load_dataset(archive)


def test_a_file_with_wrong_columns_raises_dataset_error(tmp_path, csv_text):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(csv_text.replace("readmitted", "outcome", 1))
    with pytest.raises(DatasetError, match=r"not the UCI diabetes CSV: missing columns \['readmitted'\]"):
        load_dataset(wrong)
    with pytest.raises(DatasetError, match="missing columns"):
        next(iter_dataset_chunks(str(wrong), 2))


def test_chunks_follow_the_file_order_with_a_shorter_last_chunk(synthetic_csv):
    chunks = list(iter_dataset_chunks(str(synthetic_csv), 1_500))
    assert [len(c) for c in chunks] == [1_500, 1_500, 1_000]
    assert all(c.columns.tolist() == list(encounter_columns.COLUMNS) and c.index[0] == 0 for c in chunks)
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), load_dataset(synthetic_csv))


def test_columns_come_back_in_the_data_set_order_whatever_the_file_order(tmp_path, synthetic_frame):
    shuffled = tmp_path / "shuffled.csv"
    synthetic_frame.iloc[:50][list(reversed(encounter_columns.COLUMNS))].to_csv(shuffled, index=False)
    frame = load_dataset(shuffled)
    assert frame.columns.tolist() == list(encounter_columns.COLUMNS)
    pd.testing.assert_frame_equal(frame, synthetic_frame.iloc[:50], check_dtype=False)


def test_the_synthetic_data_set_has_the_shape_columns_and_vocabularies_of_the_real_one(synthetic_frame):
    frame = synthetic_frame
    assert frame.shape == (4_000, 50) and frame.columns.tolist() == list(encounter_columns.COLUMNS)
    assert frame.map(lambda value: isinstance(value, str)).all().all()  # text, like the file
    for column, vocabulary in encounter_columns.VOCABULARIES.items():
        unexpected = set(frame[column]) - set(vocabulary) - {encounter_columns.MISSING}
        assert not unexpected, f"{column}: {unexpected}"
    assert set(frame["readmitted"]) == set(encounter_columns.TARGET_VALUES)
    assert frame["encounter_id"].is_unique
    assert frame["patient_nbr"].duplicated().sum() > 500  # repeat patients
    assert (frame["race"] == encounter_columns.MISSING).any() and (
        frame["max_glu_serum"] == encounter_columns.NOT_TAKEN
    ).any()


def test_synthetic_diagnoses_include_every_group_and_v_and_e_codes(synthetic_frame):
    codes = pd.concat([synthetic_frame[c] for c in encounter_columns.DIAGNOSIS_COLUMNS])
    assert codes.str.startswith("V").any() and codes.str.startswith("E").any()
    features = EncounterFeatures().fit_transform(synthetic_frame)
    for group in encounter_columns.DIAGNOSIS_GROUPS:
        assert features[f"diag_1_{group}"].sum() > 0, group


def test_synthetic_rows_pass_validation(synthetic_frame):
    valid, quarantined = split_valid_rows(synthetic_frame)
    assert quarantined.empty and len(valid) == len(synthetic_frame)


def test_the_synthetic_data_set_is_reproducible_per_seed():
    pd.testing.assert_frame_equal(synthetic_dataset(300, seed=5), synthetic_dataset(300, seed=5))
    assert not synthetic_dataset(300, seed=5).equals(synthetic_dataset(300, seed=6))
    assert synthetic_dataset(300, seed=5, patients=20)["patient_nbr"].nunique() <= 20


def test_a_model_trained_on_synthetic_data_beats_chance_clearly(synthetic_frame):
    train, test = synthetic_frame.iloc[:3_000], synthetic_frame.iloc[3_000:]
    model = make_pipeline(EncounterFeatures(), DecisionTreeClassifier(max_depth=5, min_samples_leaf=20, random_state=0))
    model.fit(train, target(train["readmitted"]))
    assert roc_auc_score(target(test["readmitted"]), model.predict_proba(test)[:, 1]) > 0.65


def test_a_written_synthetic_file_reads_back_identically(tmp_path):
    path = write_synthetic_csv(tmp_path / "nested" / "synthetic.csv.gz", rows=200, seed=3)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    pd.testing.assert_frame_equal(load_dataset(path), synthetic_dataset(200, seed=3), check_dtype=False)
