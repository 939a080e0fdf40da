"""EncounterFeatures: the one feature path of every model, from typed clean rows or raw text alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.tree import DecisionTreeClassifier

from readmission import schema
from readmission.clean import typed_encounters
from readmission.dataset import synthetic_dataset
from readmission.features import UNKNOWN_AGE, CodedEncounters, EncounterFeatures, diagnosis_groups, input_matrix, target
from tests.factories import encounter


def features_of(**overrides) -> pd.Series:
    """The features of one encounter (see `tests.factories.encounter`) with `overrides`."""
    return EncounterFeatures().fit_transform(pd.DataFrame([encounter(**overrides)])).iloc[0]


def hot(features: pd.Series, prefix: str) -> list[str]:
    """The columns of a one-hot block (`<prefix>_...`) that are set."""
    block = features[[c for c in features.index if c.startswith(f"{prefix}_")]]
    return [c.removeprefix(f"{prefix}_") for c in block.index[block == 1.0]]


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("139", "other"), ("140", "neoplasms"), ("239", "neoplasms"), ("239.9", "neoplasms"), ("240", "other"),
        ("249", "other"), ("249.99", "other"), ("250", "diabetes"), ("250.01", "diabetes"), ("250.83", "diabetes"),
        ("250.9", "diabetes"), ("251", "other"),
        ("389", "other"), ("390", "circulatory"), ("428", "circulatory"), ("459", "circulatory"),
        ("459.9", "circulatory"), ("460", "respiratory"), ("519", "respiratory"), ("519.8", "respiratory"),
        ("520", "digestive"), ("579", "digestive"), ("579.9", "digestive"), ("580", "genitourinary"),
        ("629", "genitourinary"), ("629.99", "genitourinary"), ("630", "other"), ("709", "other"),
        ("710", "musculoskeletal"), ("739", "musculoskeletal"), ("739.9", "musculoskeletal"), ("740", "other"),
        ("784", "other"), ("785", "circulatory"), ("786", "respiratory"), ("787", "digestive"),
        ("788", "genitourinary"), ("789", "other"), ("799", "other"), ("800", "injury"), ("999", "injury"),
        ("999.9", "injury"),
    ],
)  # fmt: skip
def test_icd9_codes_fall_in_the_strack_groups_at_every_boundary(code, group):
    assert diagnosis_groups(np.array([code], dtype=object)).tolist() == [group]
    assert hot(features_of(diag_1=code), "diag_1") == [group]


@pytest.mark.parametrize(
    ("code", "group"),
    [("V45", "v_code"), ("V57", "v_code"), ("v58", "v_code"), ("E878", "e_code"), ("E909", "e_code"),
     ("?", "missing"), (None, "missing"), ("", "missing"), (" 428 ", "circulatory"), ("abc", "other"),
     ("1000", "other"), (428, "circulatory"), (250.01, "diabetes")],
)  # fmt: skip
def test_v_and_e_codes_missing_codes_and_odd_spellings_have_their_own_groups(code, group):
    assert diagnosis_groups(np.array([code], dtype=object)).tolist() == [group]
    for column in schema.DIAGNOSIS_COLUMNS:
        assert hot(features_of(**{column: code}), column) == [group]


@pytest.mark.parametrize(
    ("column", "value", "prefix", "level"),
    [
        ("race", "Martian", "race", "other"),
        ("race", "?", "race", "missing"),
        ("admission_type_id", "99", "admission_type", "other"),
        ("admission_type_id", "?", "admission_type", "other"),
        ("discharge_disposition_id", "99", "discharge", "other"),
        ("discharge_disposition_id", "19", "discharge", "expired"),
        ("admission_source_id", "99", "admission_source", "other"),
        ("medical_specialty", "Astrology", "specialty", "other"),
        ("medical_specialty", "?", "specialty", "missing"),
        ("payer_code", "ZZ", "payer", "other"),
        ("payer_code", "?", "payer", "missing"),
    ],
)
def test_unseen_categories_map_to_a_defined_level_without_raising(column, value, prefix, level):
    assert hot(features_of(**{column: value}), prefix) == [level]


def test_unknown_values_of_ordered_and_flag_columns_never_raise_and_count_for_nothing():
    odd = features_of(gender="X", age="[100-110)", weight="heavy", max_glu_serum="high", A1Cresult="7%",
                      insulin="Sideways", metformin="?", change="?", diabetesMed="maybe",
                      num_medications="many")  # fmt: skip
    assert (odd["gender_female"], odd["gender_male"], odd["age_years"], odd["weight_recorded"]) == (
        0,
        0,
        UNKNOWN_AGE,
        0,
    )
    assert (odd["max_glu_serum_level"], odd["max_glu_serum_taken"], odd["a1c_level"], odd["a1c_taken"]) == (0, 0, 0, 0)
    assert (odd["med_insulin"], odd["med_metformin"], odd["medications_active"]) == (0, 0, 0)
    assert (odd["medication_change"], odd["diabetes_medication"], odd["num_medications"]) == (0, 0, 0)
    assert np.isfinite(odd.to_numpy(dtype=float)).all()


@pytest.mark.parametrize(
    ("column", "prefix", "values"),
    [("max_glu_serum", "max_glu_serum", ("None", "Norm", ">200", ">300")),
     ("A1Cresult", "a1c", ("None", "Norm", ">7", ">8"))],
)  # fmt: skip
def test_none_is_the_not_taken_level_and_a_missing_result_is_not_a_taken_test(column, prefix, values):
    levels = [features_of(**{column: value}) for value in values]
    assert [f[f"{prefix}_level"] for f in levels] == [0, 1, 2, 3]
    assert [f[f"{prefix}_taken"] for f in levels] == [0, 1, 1, 1]
    for missing in ("?", None):
        absent = features_of(**{column: missing})
        assert (absent[f"{prefix}_level"], absent[f"{prefix}_taken"]) == (0, 0)


def test_numbers_ages_visits_and_medications_are_engineered_as_documented():
    features = features_of(age="[70-80)", weight="[75-100)", number_outpatient="1", number_emergency="3",
                           number_inpatient="2", insulin="Up", metformin="Steady", glipizide="Down")  # fmt: skip
    assert (features["age_years"], features["weight_recorded"], features["total_prior_visits"]) == (75, 1, 6)
    medications = ("med_insulin", "med_metformin", "med_glipizide", "med_acarbose")
    assert tuple(features[m] for m in medications) == (2, 1, 3, 0)
    assert (features["medications_active"], features["medications_changed"]) == (3, 2)
    assert (features["medication_change"], features["diabetes_medication"], features["time_in_hospital"]) == (1, 1, 3)
    assert hot(features, "gender") == ["female"] and hot(features, "race") == ["caucasian"]


def test_every_batch_gets_the_same_columns(synthetic_frame):
    transformer = EncounterFeatures().fit(synthetic_frame)
    names = transformer.get_feature_names_out().tolist()
    empty = transformer.transform(pd.DataFrame(columns=list(schema.COLUMNS)))
    one = transformer.transform(synthetic_frame.iloc[:1])
    many = transformer.transform(synthetic_frame)
    shuffled = transformer.transform(synthetic_frame[list(reversed(synthetic_frame.columns))].iloc[:10])
    inputs_only = transformer.transform(synthetic_frame[list(schema.FEATURE_INPUT_COLUMNS)].iloc[:10])
    for output in (empty, one, many, shuffled, inputs_only):
        assert output.columns.tolist() == names
    assert (len(empty), len(one), len(many)) == (0, 1, len(synthetic_frame)) and transformer.n_features_out_ == len(
        names
    )
    pd.testing.assert_frame_equal(shuffled, many.iloc[:10])
    pd.testing.assert_frame_equal(inputs_only, many.iloc[:10])


def test_output_keeps_the_row_index_and_is_numeric_and_finite(synthetic_frame):
    sample = synthetic_frame.sample(50, random_state=1)
    output = EncounterFeatures().fit_transform(sample)
    assert output.index.equals(sample.index)
    assert all(dtype == np.float64 for dtype in output.dtypes) and np.isfinite(output.to_numpy()).all()


def test_absent_input_columns_count_as_missing():
    output = EncounterFeatures().fit_transform(pd.DataFrame([{"race": "Asian", "diag_1": "410"}]))
    assert output.loc[0, "race_asian"] == 1 and output.loc[0, "diag_1_circulatory"] == 1
    assert output.loc[0, "diag_2_missing"] == 1 and output.loc[0, "age_years"] == UNKNOWN_AGE


def test_numbers_given_as_numbers_or_as_text_give_the_same_features(synthetic_frame):
    text = synthetic_frame.iloc[:200]
    numeric_columns = [*schema.COUNT_RANGES, "admission_type_id", "discharge_disposition_id", "admission_source_id"]
    numbers = text.astype({column: "int64" for column in numeric_columns})
    decimals = text.assign(admission_type_id=text["admission_type_id"] + ".0")
    transformer = EncounterFeatures().fit(text)
    expected = transformer.transform(text)
    pd.testing.assert_frame_equal(transformer.transform(numbers), expected)
    pd.testing.assert_frame_equal(transformer.transform(decimals), expected)


def test_a_row_array_in_input_column_order_gives_the_same_features(synthetic_frame):
    frame = synthetic_frame.iloc[:20][list(schema.FEATURE_INPUT_COLUMNS)]
    transformer = EncounterFeatures().fit(frame)
    from_array = transformer.transform(frame.to_numpy(dtype=object))
    np.testing.assert_array_equal(from_array.to_numpy(), transformer.transform(frame).to_numpy())
    with pytest.raises(ValueError, match="expected 47 columns"):
        transformer.transform(frame.to_numpy(dtype=object)[:, :5])


def test_coded_rows_give_the_same_features_as_their_values(synthetic_frame):
    matrix = synthetic_frame.iloc[:50][list(schema.FEATURE_INPUT_COLUMNS)].to_numpy(dtype=object)
    codes, values = pd.factorize(matrix.ravel())
    values = np.append(values, ["unused", 7]).astype(object)  # positions nothing points at change nothing
    coded = CodedEncounters(codes.reshape(matrix.shape).T, values)
    assert len(coded) == 50
    np.testing.assert_array_equal(input_matrix(coded), matrix)
    transformer = EncounterFeatures().fit(matrix)
    pd.testing.assert_frame_equal(transformer.transform(coded), transformer.transform(matrix))


def test_the_transformer_is_a_first_class_scikit_learn_step(synthetic_frame):
    model = make_pipeline(EncounterFeatures(), DecisionTreeClassifier(max_depth=4, random_state=0))
    model.fit(synthetic_frame, target(synthetic_frame["readmitted"]))
    probabilities = (
        clone(model).fit(synthetic_frame, target(synthetic_frame["readmitted"])).predict_proba(synthetic_frame)
    )
    assert probabilities.shape == (len(synthetic_frame), 2)
    np.testing.assert_allclose(probabilities, model.predict_proba(synthetic_frame))


def test_the_targets_are_any_readmission_or_readmission_within_30_days():
    readmitted = pd.Series(["NO", ">30", "<30"])
    assert target(readmitted).tolist() == [0, 1, 1]
    assert target(readmitted, "30day").tolist() == [0, 0, 1]


def test_the_typed_columns_of_the_clean_table_give_the_features_of_the_raw_text():
    raw = synthetic_dataset(2_000, seed=8)  # text, as the data API serves it and diabetes_raw keeps it
    raw.loc[:5, "race"] = [None, "?", "", "Martian", "Other", "Asian"]
    raw.loc[6:8, ["payer_code", "medical_specialty", "diag_1"]] = [["?", "?", "?"], [None, None, None], ["", "", ""]]
    raw.loc[9:10, "admission_source_id"] = ["99", "0"]
    typed = typed_encounters(raw)
    assert typed["admission_source_id"].dtype == "int64" and typed.loc[1, "race"] is None
    pd.testing.assert_frame_equal(EncounterFeatures().transform(typed), EncounterFeatures().transform(raw))
    pd.testing.assert_frame_equal(
        EncounterFeatures().transform(typed.head(12)), EncounterFeatures().transform(raw.head(12))
    )
