"""The clinician UI, page by page (Streamlit's AppTest), against the real inference API over HTTP.

The API is the real app on a model trained on synthetic data and registered in a local
MLflow store; the UI talks to it exactly as it does in production.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pandas as pd
import pyarrow.ipc
import pytest
import requests
from streamlit.testing.v1 import AppTest

from readmission import schema
from readmission.config import Settings
from readmission.dataset import synthetic_dataset
from readmission.serving.schemas import RISK_LABELS, BatchPrediction, Encounter
from readmission.ui import batch, forms, model_card
from tests.servers import REPO_ROOT, free_port, http_ok, start_inference_api, wait_until

pytestmark = pytest.mark.servers

# --- the page under test ------------------------------------------------------------------


def _run_app(settings, start_page):  # AppTest runs this function's source as the script: no annotations
    from readmission.ui.app import main

    main(settings, start_page)


def open_page(settings: Settings, page: str) -> AppTest:
    """The UI as a new visitor sees it when landing on `page`, already drawn once."""
    app = AppTest.from_function(_run_app, kwargs={"settings": settings, "start_page": page}, default_timeout=60)
    return app.run()


def shown_text(app: AppTest) -> str:
    """Every text the page shows, in one string: markdown, alerts, captions and metrics."""
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in app.get(kind)]
    parts += [f"{m.label}: {m.value}" for m in app.metric]
    return "\n".join(str(p) for p in parts)


def assert_no_traceback(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]
    assert "Traceback" not in shown_text(app)


def expected_factors(served_model, changes: dict) -> list[dict]:
    """The API's factors for the form's defaults with `changes`."""
    body = {**forms.encounter_payload(forms.default_values()), **changes}
    return requests.post(f"{served_model.url}/predict?explain=true", timeout=10, json=body).json()["factors"]


@pytest.fixture
def ui_settings(served_model, make_settings) -> Settings:
    """The UI's settings: the real API, and the MLflow store its model was registered in."""
    return make_settings(api_url=served_model.url, mlflow_tracking_uri=served_model.registry.mlflow_tracking_uri)


@pytest.fixture
def api_down_settings(make_settings) -> Settings:
    return make_settings(
        api_url=f"http://127.0.0.1:{free_port()}", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}"
    )


# --- the form as data ---------------------------------------------------------------------


def test_every_form_field_is_a_raw_input_column_and_every_option_is_accepted_by_the_api_model():
    assert set(forms.FIELDS) <= set(schema.FEATURE_INPUT_COLUMNS)
    assert set(schema.MEDICATIONS) | {"race", "age", "diag_1", "A1Cresult", "change", "diabetesMed"} <= set(
        forms.FIELDS
    )
    defaults = forms.encounter_payload(forms.default_values())
    assert forms.field_errors(defaults) == {}
    for column, field in forms.FIELDS.items():
        values = (
            field.options if isinstance(field, forms.Choice) else field.bounds if isinstance(field, forms.Count) else []
        )
        for value in values:
            assert forms.field_errors({**defaults, column: value}) == {}, (column, value)


def test_code_tables_are_labelled_with_the_data_sets_descriptions_not_ids():
    admission_type = forms.FIELDS["admission_type_id"]
    assert admission_type.labels[1] == "Emergency" and admission_type.options == list(schema.ADMISSION_TYPES)
    assert forms.FIELDS["discharge_disposition_id"].labels[11] == "Expired"
    assert forms.FIELDS["A1Cresult"].labels[schema.NOT_TAKEN] == forms.NOT_MEASURED
    assert forms.FIELDS["race"].labels[schema.MISSING] == forms.NOT_RECORDED


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("428", "Circulatory system"),
        ("250.01", "Diabetes"),
        ("V45", "Supplementary factors (V code)"),
        ("", forms.NOT_RECORDED),
        ("999.9", "Injury and poisoning"),
        ("042", "Other conditions"),
    ],
)
def test_a_diagnosis_code_is_shown_with_the_group_the_model_puts_it_in(code, group):
    assert forms.diagnosis_group(code) == group


def test_malformed_diagnosis_codes_are_told_apart_from_well_formed_ones():
    assert all(forms.looks_like_icd9(code) for code in ("428", "250.01", "V57.1", "E878", "e885", " 401 ", ""))
    assert not any(forms.looks_like_icd9(code) for code in ("42B", "4280", "V5", "E87", "diabetes", "250.011"))


def test_a_blank_field_is_left_out_so_the_api_applies_the_missing_meaning():
    payload = forms.encounter_payload({**forms.default_values(), "diag_3": "  ", "diag_2": " 250.01 "})
    assert "diag_3" not in payload and payload["diag_2"] == "250.01"
    assert Encounter.model_validate(payload).diag_3 == schema.MISSING


# --- batch files as data ------------------------------------------------------------------


def test_csv_cells_become_the_json_types_of_the_request_and_extra_columns_are_dropped():
    frame = synthetic_dataset(3, seed=1).assign(ward="B2")
    frame.loc[0, "admission_type_id"] = "3.0"
    frame.loc[1, "payer_code"] = None
    bodies = batch.request_bodies(frame)
    assert bodies[0]["admission_type_id"] == 3 and isinstance(bodies[0]["time_in_hospital"], int)
    assert "payer_code" not in bodies[1]
    assert set(bodies[2]) == set(schema.FEATURE_INPUT_COLUMNS)  # no extra column, no id: the model needs neither


def test_rows_the_request_model_rejects_are_reported_with_line_and_reason_and_the_rest_kept():
    frame = synthetic_dataset(6, seed=2)
    frame.loc[1, "age"] = "[70-80]"
    frame.loc[4, "time_in_hospital"] = "99"
    frame.loc[4, "insulin"] = "More"
    prepared = batch.prepare_batch(frame, max_rows=10)
    assert list(prepared.valid_rows) == [0, 2, 3, 5] and len(prepared.encounters) == 4
    assert list(prepared.rejected["line"]) == [3, 6]
    assert list(prepared.rejected["encounter_id"]) == [frame.loc[1, "encounter_id"], frame.loc[4, "encounter_id"]]
    assert prepared.rejected["reason"][0].startswith("age = '[70-80]': Input should be")
    assert (
        "time_in_hospital = '99'" in prepared.rejected["reason"][1]
        and "insulin = 'More'" in prepared.rejected["reason"][1]
    )


def test_scored_rows_keep_the_uploaded_columns_and_the_answer_replaces_columns_of_the_same_name():
    frame = synthetic_dataset(3, seed=5).assign(ward="B2", probability="old")
    frame.loc[1, "gender"] = "F"
    prepared = batch.prepare_batch(frame, max_rows=10)
    answer = BatchPrediction(
        model_name="m",
        model_version="1",
        rows=2,
        predictions=[
            {"prediction": 0, "probability": 0.1, "risk_band": "low", "label": RISK_LABELS["low"]},
            {"prediction": 1, "probability": 0.9, "risk_band": "high", "label": RISK_LABELS["high"]},
        ],
    )
    scored = batch.scored_frame(prepared, answer)
    assert list(scored["line"]) == [2, 4] and list(scored["encounter_id"]) == list(frame["encounter_id"].iloc[[0, 2]])
    assert list(scored["probability"]) == [0.1, 0.9] and list(scored["ward"]) == ["B2", "B2"]
    assert list(scored.columns[-4:]) == list(batch.PREDICTION_COLUMNS) and batch.band_counts(scored) == {
        "low": 1, "medium": 0, "high": 1}  # fmt: skip
    assert pd.read_csv(io.BytesIO(batch.scored_csv(scored)))["risk_band"].tolist() == ["low", "high"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"race,gender\n", "no rows"),
        (b"race,gender\nCaucasian,Female\n", "lacks required columns: age"),
    ],
)
def test_a_file_that_cannot_be_scored_is_refused_with_the_reason(content, message):
    with pytest.raises(batch.BatchFileError, match=message):
        batch.prepare_batch(batch.read_upload(content), max_rows=10)


def test_a_file_over_the_row_limit_is_refused_naming_the_limit():
    with pytest.raises(batch.BatchFileError, match="at most 5 per request"):
        batch.prepare_batch(synthetic_dataset(6), max_rows=5)


def test_a_gzipped_upload_reads_like_the_plain_one():
    plain = synthetic_dataset(5, seed=4).to_csv(index=False).encode()
    gzipped = io.BytesIO()
    synthetic_dataset(5, seed=4).to_csv(gzipped, index=False, compression="gzip")
    pd.testing.assert_frame_equal(batch.read_upload(gzipped.getvalue()), batch.read_upload(plain))


def test_lineage_names_the_batches_and_metrics_prefer_the_test_set():
    assert model_card.trained_batches({"lineage.batches": "3,1,2,5,7,8", "lineage.test_rows": "9"}) == "1–3, 5, 7–8"
    assert model_card.trained_batches({"lineage.batches": ""}) is None
    assert model_card.trained_batches({"data_fingerprint": "x"}) is None
    metrics = model_card.headline_metrics({"test_roc_auc": 0.71, "roc_auc": 0.9, "accuracy": 0.66})
    assert metrics == {"ROC-AUC": 0.71, "PR-AUC": None, "Accuracy": 0.66, "F1": None}


# --- single patient page ------------------------------------------------------------------


def test_a_filled_form_shows_the_apis_band_probability_and_model_version(ui_settings, served_model):
    app = open_page(ui_settings, "patient")
    assert_no_traceback(app)
    app.selectbox(key="field:age").set_value("[80-90)")
    app.number_input(key="field:number_inpatient").set_value(3)
    app.number_input(key="field:number_emergency").set_value(2)
    app.selectbox(key="field:insulin").set_value("Up")
    app.selectbox(key="field:change").set_value("Ch")
    app.text_input(key="field:diag_2").input("V45")
    app.run()
    assert "insulin (dose increased)" in app.expander[0].label.lower()
    app.button(key="predict").click().run()
    assert_no_traceback(app)

    expected = requests.post(f"{served_model.url}/predict", timeout=10, json={
        **forms.encounter_payload(forms.default_values()), "age": "[80-90)", "number_inpatient": 3,
        "number_emergency": 2, "insulin": "Up", "change": "Ch", "diag_2": "V45"}).json()  # fmt: skip
    text = shown_text(app)
    assert expected["label"] in text and expected["label"] in RISK_LABELS.values()
    assert f"Probability of readmission: {expected['probability']:.0%}" in text
    assert f"Model: version {served_model.version}" in text
    assert re.search(r"API latency: \d+ ms", text)
    assert "What moved this patient's risk most" in text
    (dataset,) = app.get("vega_lite_chart")[0].proto.datasets
    bars = pyarrow.ipc.open_stream(dataset.data.data).read_pandas()
    factors = expected_factors(served_model, {"age": "[80-90)", "number_inpatient": 3, "number_emergency": 2,
                                              "insulin": "Up", "change": "Ch", "diag_2": "V45"})  # fmt: skip
    assert list(bars["factor"]) == [f"{factor['label']}: {factor['value_label']}" for factor in factors]
    assert list(bars["contribution"]) == pytest.approx([factor["contribution"] for factor in factors])
    assert "Inpatient admissions in the past year: 3" in list(bars["factor"])


def test_a_malformed_diagnosis_code_is_flagged_beside_its_field_and_predicting_waits(ui_settings):
    app = open_page(ui_settings, "patient")
    assert "Group: **Circulatory system**" in shown_text(app)  # the default primary diagnosis, 428
    app.text_input(key="field:diag_1").input("42B").run()
    assert [e.value for e in app.error] == ["'42B' is not an ICD-9 code (e.g. 428, 250.01, V45, E878)."]
    assert app.button(key="predict").disabled
    app.text_input(key="field:diag_1").input("250.02").run()
    assert not app.error and not app.button(key="predict").disabled
    assert "Group: **Diabetes**" in shown_text(app)


def test_changing_the_form_after_a_prediction_withdraws_the_answer(ui_settings):
    app = open_page(ui_settings, "patient")
    app.button(key="predict").click().run()
    assert any(label in shown_text(app) for label in RISK_LABELS.values())
    app.number_input(key="field:number_inpatient").set_value(5).run()
    text = shown_text(app)
    assert (
        not any(label in text for label in RISK_LABELS.values()) and "press **Predict readmission risk** again" in text
    )


# --- batch page ---------------------------------------------------------------------------


def test_a_batch_with_a_bad_row_lists_it_with_the_reason_and_scores_the_others(ui_settings, served_model):
    frame = synthetic_dataset(40, seed=11).assign(ward="B2")  # an extra column: ignored
    frame.loc[6, "admission_type_id"] = "urgent"
    app = open_page(ui_settings, "batch")
    app.file_uploader[0].set_value(("ward-b2.csv", frame.to_csv(index=False).encode(), "text/csv")).run()
    assert_no_traceback(app)

    rejected, scored = app.dataframe[0].value, app.dataframe[1].value
    assert rejected.to_dict("records") == [{"line": 8, "encounter_id": frame.loc[6, "encounter_id"],
                                            "reason": "admission_type_id = 'urgent': Input should be 1, 2, 3, 4, 5, 6, 7 or 8"}]  # fmt: skip
    assert len(scored) == 39 and 8 not in set(scored["line"])
    # The API's own CSV reading of the same good rows gives the same answers the page shows.
    good = frame.drop(index=6).drop(columns="ward")
    direct = requests.post(f"{served_model.url}/predict/batch", data=good.to_csv(index=False), timeout=30,
                           headers={"Content-Type": "text/csv"}).json()["predictions"]  # fmt: skip
    assert list(scored["probability"].round(6)) == [round(p["probability"], 6) for p in direct]
    assert list(scored["risk_band"]) == [p["risk_band"] for p in direct]
    metrics = {m.label: int(m.value.replace(",", "")) for m in app.metric}
    assert metrics["Scored"] == 39 and metrics["Rejected"] == 1
    assert sum(metrics[f"{band.capitalize()} risk"] for band in ("low", "medium", "high")) == 39
    assert app.get("vega_lite_chart"), "the risk histogram"
    assert app.download_button[0].label == "Download scored CSV"
    assert "1 row(s) were rejected and not scored" in shown_text(app)


def test_a_batch_over_the_limit_is_refused_before_anything_is_sent(ui_settings):
    app = open_page(ui_settings.model_copy(update={"max_batch_rows": 10}), "batch")
    app.file_uploader[0].set_value(("big.csv", synthetic_dataset(11).to_csv(index=False).encode(), "text/csv")).run()
    assert_no_traceback(app)
    assert "The file has 11 rows; the prediction service scores at most 10 per request" in shown_text(app)
    assert not app.dataframe


# --- model page ---------------------------------------------------------------------------


def test_the_model_page_shows_version_training_date_metrics_images_and_lineage(ui_settings, served_model):
    card = requests.get(f"{served_model.url}/model", timeout=10).json()
    app = open_page(ui_settings, "model")
    assert_no_traceback(app)
    text = shown_text(app)
    assert f"diabetes-readmission, version {served_model.version}" in [s.value for s in app.subheader]
    assert re.search(r"trained \*\*\d{4}-\d\d-\d\d \d\d:\d\d UTC\*\*", text)
    for label, key in (("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"), ("Accuracy", "accuracy"), ("F1", "f1")):
        assert f"{label}: {card['metrics'][f'test_{key}']:.3f}" in text
    assert [image.captions for image in app.image] == [
        ["ROC curve"],
        ["Confusion matrix"],
        ["Reliability diagram (test set, 10 bins)"],
    ]
    assert f"the expected calibration error is **{card['metrics']['test_ece']:.3f}**" in text
    assert "**low** below 40%, **moderate** from 40% to below 60%, **high** from 60%" in text
    groups = app.dataframe[0].value
    assert list(groups.columns[:4]) == ["Attribute", "Group", "Encounters", "Status"]
    assert len(groups) == len(card["groups"]) and set(groups["Attribute"]) == {"race", "gender", "age_band"}
    lineage = dict(app.dataframe[1].value.to_numpy())
    assert lineage["train_rows"] == card["tags"]["lineage.train_rows"]
    assert lineage["git_commit"] == card["tags"]["lineage.git_commit"]
    assert "**Batches trained on:** not recorded" in text  # synthetic rows carry no batch number


def test_the_model_page_without_mlflow_still_shows_the_card_and_says_why_images_are_missing(ui_settings, served_model):
    unreachable = f"http://127.0.0.1:{free_port()}"
    app = open_page(ui_settings.model_copy(update={"mlflow_tracking_uri": unreachable}), "model")
    assert_no_traceback(app)
    assert f"MLflow at {unreachable} cannot be reached" in shown_text(app)
    assert f"diabetes-readmission, version {served_model.version}" in [s.value for s in app.subheader]


# --- monitoring page ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitored(served_model, tmp_path_factory) -> Settings:
    """The UI's settings on stores holding three batches (see `monitored_store`), scored by the served version."""
    from tests.factories import monitored_store

    settings = Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("monitored"), api_url=served_model.url,
                        mlflow_tracking_uri=served_model.registry.mlflow_tracking_uri)  # fmt: skip
    monitored_store(settings, served_model.version)
    return settings


def test_the_monitoring_page_shows_each_batchs_live_score_drift_version_and_the_promotions(monitored, served_model):
    app = open_page(monitored, "monitoring")
    assert_no_traceback(app)
    batches, promotions = (frame.value for frame in app.dataframe)
    assert list(batches["Batch"]) == [1, 2, 3]
    assert (
        pd.isna(batches["Version in service"][0])
        and list(batches["Version in service"][1:]) == [served_model.version] * 2
    )
    live = batches["Live ROC-AUC"]
    assert pd.isna(live[0]) and live[1] > 0.6 > live[2]
    assert list(batches[""]) == ["", "", "⚠ below floor"]
    assert pd.isna(batches["Largest PSI"][0]) and (batches["Largest PSI"][1:] >= 0).all()
    assert re.match(r"^\w+ \d\.\d{3}, \w+ \d\.\d{3}, \w+ \d\.\d{3}$", batches["Most drifting (PSI)"][1])
    assert "Live ROC-AUC below the floor 0.60 on batch(es) 3." in shown_text(app)
    assert app.get("vega_lite_chart"), "the live ROC-AUC chart"
    assert list(promotions["Version"]) == [served_model.version] and list(promotions["By"]) == ["manual"]


def test_the_monitoring_page_without_its_stores_says_why(api_down_settings):
    unreachable = api_down_settings.model_copy(update={"raw_db_url": "mysql+pymysql://nobody@127.0.0.1:1/none",
                                                       "clean_db_url": "mysql+pymysql://nobody@127.0.0.1:1/none"})  # fmt: skip
    app = open_page(unreachable, "monitoring")
    assert_no_traceback(app)
    assert "The platform's stores could not be read: OperationalError" in shown_text(app)


# --- the API down -------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["patient", "batch", "model"])  # the Monitoring page reads the stores instead
def test_with_the_api_down_every_page_says_so_and_offers_a_retry(api_down_settings, page):
    app = open_page(api_down_settings, page)
    assert_no_traceback(app)
    assert f"The prediction service at {api_down_settings.api_url} cannot be reached" in shown_text(app)
    assert [b.label for b in app.button if b.key == "retry_api"] == ["Retry"]
    if page == "patient":
        assert app.button(key="predict").disabled
    app.button(key="retry_api").click().run()  # still down: the same message, still no traceback
    assert_no_traceback(app)
    assert "cannot be reached" in shown_text(app)


def test_while_the_api_has_no_model_the_page_says_so_and_retry_shows_it_once_loaded(served_model, make_settings,
                                                                                     tmp_path):  # fmt: skip
    from readmission import registry

    alias = "ui-not-yet"  # no version has it yet: the API starts without a model and keeps trying
    server, url = start_inference_api({"MLFLOW_TRACKING_URI": served_model.registry.mlflow_tracking_uri,
                                       "MODEL_URI": f"models:/diabetes-readmission@{alias}"},
                                      tmp_path, wait_for_model=False)  # fmt: skip
    try:
        app = open_page(make_settings(api_url=url), "patient")
        assert_no_traceback(app)
        assert f"The prediction service at {url} is not ready" in shown_text(app)
        assert app.button(key="predict").disabled and app.button(key="retry_api").label == "Retry"

        registry.client(served_model.registry).set_registered_model_alias("diabetes-readmission", alias,
                                                                          served_model.version)  # fmt: skip
        wait_until(lambda: http_ok(f"{url}/ready"), timeout=90, what="the API to load the model")
        app.button(key="retry_api").click().run()
        assert "not ready" not in shown_text(app) and not app.button(key="predict").disabled
    finally:
        server.stop()


# --- the image ----------------------------------------------------------------------------


def test_the_ui_imports_none_of_the_serving_stack():
    """The image installs only the `ui` extra: FastAPI, gunicorn, uvicorn and Prometheus must not be needed
    (SQLAlchemy is in the extra, but only the Monitoring page imports it, when it reads the stores)."""
    script = (
        "import importlib.abc, sys\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi', 'gunicorn', 'uvicorn', 'prometheus_client', 'sqlalchemy', 'skops'}:\n"
        "            raise ImportError(f'the UI must not import {name}')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import readmission.ui.app, readmission.ui.pages, readmission.ui.model_card\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)


# --- access: sign-in gate, allow-list, no patient identifier in the logs -----------------------


@pytest.mark.parametrize(
    ("claims", "domains", "groups", "enters"),
    [
        ({"email": "ana@hospital.example"}, "hospital.example", "", True),
        ({"email": "Ana@Hospital.Example"}, "hospital.example", "", True),
        ({"email": "ana@hospital.example.evil"}, "hospital.example", "", False),
        ({"email": "ana@hospital.example", "email_verified": False}, "hospital.example", "", False),
        ({"email": "ana@elsewhere.example", "groups": ["Clinicians", "staff"]}, "hospital.example", "clinicians", True),
        ({"email": "ana@elsewhere.example", "groups": "staff clinicians"}, "", "clinicians", True),
        ({"email": "ana@elsewhere.example", "groups": ["visitors"]}, "hospital.example", "clinicians", False),
        ({"sub": "no-email"}, "hospital.example", "clinicians", False),
        ({"email": "anyone@anywhere.example"}, "", "", True),
    ],
)
def test_the_allow_list_admits_listed_domains_and_groups_only(make_settings, claims, domains, groups, enters):
    from readmission.ui.access import may_enter

    settings = make_settings(ui_allowed_domains=domains, ui_allowed_groups=groups)
    assert may_enter(claims, settings) is enters


@pytest.mark.parametrize("page", ["patient", "batch", "model"])  # the Monitoring page reads the stores instead
def test_with_sign_in_on_a_visitor_sees_only_the_sign_in_page(api_down_settings, page):
    app = open_page(api_down_settings.model_copy(update={"ui_sign_in": True}), page)
    assert_no_traceback(app)
    assert [b.label for b in app.button] == ["Sign in"]
    assert "Sign in with your hospital account" in shown_text(app)
    assert not app.selectbox and not app.file_uploader and not app.number_input


def test_identifiers_and_free_text_of_an_upload_reach_no_log(ui_settings, caplog):
    marks = {"encounter_id": "918273645", "patient_nbr": "546372819", "note": "Jane-Roe-free-text-QZX"}
    frame = synthetic_dataset(12, seed=5).assign(encounter_id=marks["encounter_id"], patient_nbr=marks["patient_nbr"])
    frame.loc[3, "race"] = marks["note"]
    with caplog.at_level("DEBUG"):
        app = open_page(ui_settings, "batch")
        app.file_uploader[0].set_value(("ward.csv", frame.to_csv(index=False).encode(), "text/csv")).run()
    assert_no_traceback(app)
    assert app.dataframe[1].value.shape[0] == 11  # scored, with the bad row listed apart
    assert caplog.records, "the UI's logging was captured"
    assert [mark for mark in marks.values() if mark in caplog.text] == []
