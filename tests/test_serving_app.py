"""The inference API over HTTP: the real app, started with its image's command (gunicorn + uvicorn),
serving a real model trained on synthetic data and registered in a real MLflow store.

One server for the module (one worker, polling switched off so that only `/reload` swaps
models); the hot-swap test runs last among the ones that look at the served version.
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from readmission import encounter_columns
from readmission.config import Settings
from readmission.dataset import synthetic_dataset
from readmission.loadtest import request_body
from readmission.serving.api_models import EXAMPLE_ENCOUNTER, FIELDS, RISK_LABELS
from readmission.serving.model_store import load_served_model, resolve_target
from tests.factories import metric, register_model
from tests.servers import start_inference_api, wait_until

pytestmark = pytest.mark.servers

TOKEN = "test-reload-token"
MAX_BATCH_ROWS = 100
MAX_BODY_BYTES = 200_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUIRED = [column for column, spec in FIELDS.items() if spec.required]
DEFAULTS = Settings(_env_file=None)  # the risk thresholds the server runs with


@pytest.fixture(scope="module")
def registry_settings(tmp_path_factory) -> Settings:
    """The embedded MLflow store (SQLite and local artifacts) the test registers models in."""
    return Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("serving-registry"))


@pytest.fixture(scope="module")
def first_version(registry_settings) -> str:
    return register_model(registry_settings, seed=0)


@pytest.fixture(scope="module")
def api(registry_settings, first_version, tmp_path_factory) -> str:
    server, url = start_inference_api(
        {
            "MLFLOW_TRACKING_URI": registry_settings.mlflow_tracking_uri,
            "RELOAD_TOKEN": TOKEN,
            "MODEL_POLL_SECONDS": "3600",
            "MAX_BATCH_ROWS": str(MAX_BATCH_ROWS),
            "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        },
        tmp_path_factory.mktemp("serving-api"),
    )
    yield url
    server.stop()


@pytest.fixture(scope="module")
def encounters() -> pd.DataFrame:
    """Raw rows of the data set's shape (all 50 columns, as text)."""
    return synthetic_dataset(40, seed=11)


def bodies(frame: pd.DataFrame) -> list[dict]:
    return [request_body(row) for row in frame.to_dict(orient="records")]


def same_factors(some: list[dict], others: list[dict]) -> bool:
    """The same fields, values and directions, and contributions equal but for the last bits."""
    exact = [{k: v for k, v in factor.items() if k != "contribution"} for factor in some]
    return exact == [{k: v for k, v in factor.items() if k != "contribution"} for factor in others] and [
        f["contribution"] for f in some
    ] == pytest.approx([f["contribution"] for f in others], abs=1e-9)


def served_pipeline(settings: Settings, version: str):
    """The registered pipeline of `version`, loaded in this process the way the service loads it."""
    pinned = settings.model_copy(update={"model_uri": f"models:/{settings.model_name}/{version}"})
    return load_served_model(pinned, resolve_target(pinned)).pipeline


# --- liveness, readiness, model card -----------------------------------------------------------------


def test_health_answers_ok(api):
    response = requests.get(f"{api}/health", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_names_the_model_in_service(api, first_version):
    response = requests.get(f"{api}/ready", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model_name": "diabetes-readmission", "model_version": first_version}


def test_the_model_card_describes_the_production_version_and_its_lineage(api, first_version):
    card = requests.get(f"{api}/model", timeout=10).json()
    assert (card["name"], card["version"], card["alias"]) == ("diabetes-readmission", first_version, "production")
    assert card["uri"] == f"models:/diabetes-readmission/{first_version}" and card["run_id"]
    assert 0.5 < card["metrics"]["test_roc_auc"] <= 1
    assert card["decision_threshold"] == pytest.approx(card["metrics"]["decision_threshold"])
    assert card["tags"]["lineage.training_data_sha256"]
    assert card["tags"]["candidate"] == "gradient_boosting_calibrated"
    groups = {(g["attribute"], g["group"]): g for g in card["groups"]}
    assert {attribute for attribute, _ in groups} == {"race", "gender", "age_band"}
    assert sum(g["encounters"] for g in card["groups"] if g["attribute"] == "gender") == card["metrics"]["test_rows"]
    for group in card["groups"]:  # the registered model's test split is small: most groups are too small to score
        scored = group["encounters"] >= 200
        assert group["status"] == ("scored" if scored else "too small") and (group["roc_auc"] is None) != scored
    assert [f["name"] for f in card["input_fields"]] == list(encounter_columns.FEATURE_INPUT_COLUMNS)
    assert {f["name"] for f in card["input_fields"] if f["required"]} == set(REQUIRED)
    assert card["loaded_at"] and card["load_seconds"] > 0


# --- single predictions ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # the store's checked shortcut, see _steps
def test_a_prediction_is_the_registered_pipelines_answer_in_plain_words(api, registry_settings, encounters):
    card = requests.get(f"{api}/model", timeout=10).json()
    expected = served_pipeline(registry_settings, card["version"]).predict_proba(encounters)[:, 1]
    for body, probability in zip(bodies(encounters.head(10)), expected[:10], strict=True):
        answer = requests.post(f"{api}/predict", json=body, timeout=10).json()
        assert answer["probability"] == pytest.approx(probability, abs=1e-12)
        assert answer["prediction"] == int(probability >= card["decision_threshold"])
        band = (
            "high"
            if probability >= DEFAULTS.risk_high_threshold
            else ("medium" if probability >= DEFAULTS.risk_medium_threshold else "low")
        )
        assert (answer["risk_band"], answer["label"]) == (band, RISK_LABELS[band])
        assert (answer["model_name"], answer["model_version"]) == ("diabetes-readmission", card["version"])
        assert type(answer["prediction"]) is int and type(answer["probability"]) is float


def test_left_out_fields_take_the_data_sets_missing_meaning(api):
    minimal = {column: EXAMPLE_ENCOUNTER[column] for column in REQUIRED}
    explicit = {**minimal, **{column: spec.default for column, spec in FIELDS.items() if not spec.required}}
    assert explicit["race"] == "?" and explicit["max_glu_serum"] == "None" and explicit["insulin"] == "No"
    answers = [requests.post(f"{api}/predict", json=body, timeout=10).json() for body in (minimal, explicit)]
    assert answers[0]["probability"] == answers[1]["probability"]


def test_an_unknown_icd9_code_is_accepted_as_the_other_group(api):
    unknown, other = ({**EXAMPLE_ENCOUNTER, "diag_1": code} for code in ("Z99.9", "780"))  # 780: "other" group
    answers = [requests.post(f"{api}/predict", json=body, timeout=10) for body in (unknown, other)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["probability"] == answers[1].json()["probability"]


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_an_explained_prediction_lists_the_fields_that_moved_the_risk(api, registry_settings):
    from readmission.explain import Explainer

    body = {**EXAMPLE_ENCOUNTER, "number_inpatient": 4, "diag_1": "Z99.9"}  # an unknown ICD-9 code among them
    plain = requests.post(f"{api}/predict", json=body, timeout=10).json()
    explained = requests.post(f"{api}/predict", params={"explain": "true"}, json=body, timeout=30).json()
    assert plain["factors"] is None and {k: explained[k] for k in ("probability", "risk_band")} == {
        k: plain[k] for k in ("probability", "risk_band")
    }
    assert explained["factors_scale"] == "log-odds" and 1 <= len(explained["factors"]) <= 5
    pipeline = served_pipeline(registry_settings, explained["model_version"])
    expected = Explainer(pipeline).explain(pd.DataFrame([body])[list(encounter_columns.FEATURE_INPUT_COLUMNS)])
    assert explained["base_log_odds"] == pytest.approx(expected.base_value)
    assert same_factors(explained["factors"], expected.factors(0))
    for factor in explained["factors"]:
        assert factor["value"] == body[factor["field"]] and factor["label"] and factor["value_label"]
    by_field = {factor["field"]: factor for factor in explained["factors"]}
    assert by_field["number_inpatient"]["label"] == "Inpatient admissions in the past year"
    assert by_field["number_inpatient"]["direction"] == "raises"


def test_a_batch_explains_every_row_like_single_requests(api, encounters):
    rows = bodies(encounters.head(6))
    batch = requests.post(f"{api}/predict/batch", params={"explain": "true"}, json=rows, timeout=30).json()
    by_csv = requests.post(
        f"{api}/predict/batch?explain=true",
        data=encounters.head(6).to_csv(index=False),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    ).json()
    singles = [requests.post(f"{api}/predict?explain=true", json=row, timeout=10).json() for row in rows]
    for single, row_answer, csv_answer in zip(singles, batch["predictions"], by_csv["predictions"], strict=True):
        assert {k: single[k] for k in row_answer if k != "factors"} == pytest.approx(
            {k: v for k, v in row_answer.items() if k != "factors"}
        )
        assert same_factors(single["factors"], row_answer["factors"])
        assert same_factors(csv_answer["factors"], row_answer["factors"])
    plain = requests.post(f"{api}/predict/batch", json=rows, timeout=30).json()
    assert all("factors" not in answer for answer in plain["predictions"])


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("time_in_hospital", "five", "int_type"),
        ("time_in_hospital", 2.5, "int_type"),
        ("number_inpatient", True, "int_type"),
        ("number_inpatient", 51, "less_than_equal"),
        ("num_lab_procedures", -1, "greater_than_equal"),
        ("race", "Martian", "literal_error"),
        ("insulin", "Sideways", "literal_error"),
        ("admission_type_id", 99, "literal_error"),
        ("admission_type_id", True, "int_type"),
        ("discharge_disposition_id", 1.0, "int_type"),
        ("diag_1", 428, "string_type"),
        ("diag_1", "4" * 65, "string_too_long"),
    ],
)
def test_a_wrong_value_is_refused_with_422_naming_the_field(api, field, value, kind):
    response = requests.post(f"{api}/predict", json={**EXAMPLE_ENCOUNTER, field: value}, timeout=10)
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body", field], kind)]


def test_a_missing_required_field_and_an_unknown_one_are_refused_with_422(api):
    body = {k: v for k, v in EXAMPLE_ENCOUNTER.items() if k != "age"} | {"A1Cresults": ">8"}
    response = requests.post(f"{api}/predict", json=body, timeout=10)
    assert response.status_code == 422
    assert {(e["loc"][-1], e["type"]) for e in response.json()["detail"]} == {
        ("age", "missing"),
        ("A1Cresults", "extra_forbidden"),
    }


@pytest.mark.parametrize(
    "content, content_type",
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"race=x", "text/plain"),
    ],
)
def test_a_body_that_is_not_an_encounter_is_a_client_error(api, content, content_type):
    response = requests.post(f"{api}/predict", data=content, headers={"Content-Type": content_type}, timeout=10)
    assert 400 <= response.status_code < 500


def test_a_body_over_the_size_limit_is_refused_with_413(api):
    big = b"[" + b" " * MAX_BODY_BYTES + b"]"
    declared = requests.post(f"{api}/predict", data=big, headers={"Content-Type": "application/json"}, timeout=10)
    chunked = requests.post(
        f"{api}/predict/batch",
        data=iter([big[:100_000], big[100_000:]]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )  # no Content-Length
    for response in (declared, chunked):
        assert response.status_code == 413 and "MAX_BODY_BYTES" in response.json()["detail"]


# --- batches ---------------------------------------------------------------------------------------


def test_a_json_batch_is_scored_in_order_like_single_requests(api, encounters):
    rows = bodies(encounters.head(12))
    batch = requests.post(f"{api}/predict/batch", json=rows, timeout=30).json()
    assert batch["rows"] == 12 and len(batch["predictions"]) == 12 and batch["model_version"]
    singles = [requests.post(f"{api}/predict", json=row, timeout=10).json() for row in rows[:4]]
    for single, row_answer in zip(singles, batch["predictions"][:4], strict=True):
        assert {k: single[k] for k in row_answer} == row_answer


def test_a_csv_batch_in_the_data_sets_format_scores_like_json(api, encounters):
    csv = encounters.to_csv(index=False)  # all 50 columns: identifiers and the target are ignored
    by_csv = requests.post(f"{api}/predict/batch", data=csv, headers={"Content-Type": "text/csv"}, timeout=30)
    by_json = requests.post(f"{api}/predict/batch", json=bodies(encounters), timeout=30)
    assert by_csv.status_code == by_json.status_code == 200
    assert by_csv.json()["predictions"] == by_json.json()["predictions"]


def test_a_csv_without_optional_columns_takes_their_missing_meaning(api, encounters):
    rows = encounters.head(5).assign(weight="?", payer_code="?", metformin="No")
    full = requests.post(
        f"{api}/predict/batch", data=rows.to_csv(index=False), headers={"Content-Type": "text/csv"}, timeout=30
    )
    lean = requests.post(
        f"{api}/predict/batch",
        data=rows.drop(columns=["weight", "payer_code", "metformin"]).to_csv(index=False),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert full.json()["predictions"] == lean.json()["predictions"]


def test_batch_errors_name_the_row_and_the_field(api, encounters):
    rows = bodies(encounters.head(5))
    rows[3]["race"] = "Martian"
    json_errors = requests.post(f"{api}/predict/batch", json=rows, timeout=30)
    text = encounters.head(5).copy()
    text.loc[2, "number_inpatient"] = "many"
    csv_errors = requests.post(
        f"{api}/predict/batch", data=text.to_csv(index=False), headers={"Content-Type": "text/csv"}, timeout=30
    )
    assert json_errors.status_code == csv_errors.status_code == 422
    assert [e["loc"] for e in json_errors.json()["detail"]] == [["body", 3, "race"]]
    (error,) = csv_errors.json()["detail"]
    assert error["loc"] == ["body", 2, "number_inpatient"] and "'many'" in error["msg"] and "line 4" in error["msg"]


def test_a_csv_missing_a_required_column_or_with_an_unknown_one_is_refused(api, encounters):
    text = encounters.head(3).drop(columns=["age"]).assign(favourite_colour="blue").to_csv(index=False)
    response = requests.post(f"{api}/predict/batch", data=text, headers={"Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 422
    assert {e["loc"][-1] for e in response.json()["detail"]} == {"age", "favourite_colour"}


def test_a_batch_over_max_batch_rows_is_refused_with_413(api):
    rows = [EXAMPLE_ENCOUNTER] * (MAX_BATCH_ROWS + 1)
    csv = pd.DataFrame(rows).to_csv(index=False)
    for response in (
        requests.post(f"{api}/predict/batch", json=rows, timeout=30),
        requests.post(f"{api}/predict/batch", data=csv, headers={"Content-Type": "text/csv"}, timeout=30),
    ):
        assert response.status_code == 413
        assert (
            f"{MAX_BATCH_ROWS + 1} encounters" in response.json()["detail"]
            and "MAX_BATCH_ROWS" in response.json()["detail"]
        )
    assert requests.post(f"{api}/predict/batch", json=rows[:MAX_BATCH_ROWS], timeout=30).status_code == 200


@pytest.mark.parametrize(
    "content, content_type, status",
    [
        (b"[]", "application/json", 422),
        (b"race,age\n", "text/csv", 422),
        (b"", "text/csv", 422),
        (b"race\nCaucasian", "application/xml", 415),
    ],
)
def test_malformed_batches_are_client_errors(api, content, content_type, status):
    response = requests.post(f"{api}/predict/batch", data=content, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == status


# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_count_requests_predictions_and_batch_rows(api, encounters):
    before = requests.get(f"{api}/metrics", timeout=10).text
    for body in bodies(encounters.head(3)):
        requests.post(f"{api}/predict", json=body, timeout=10).raise_for_status()
    requests.post(f"{api}/predict", json={"race": "Martian"}, timeout=10)
    requests.post(f"{api}/predict/batch", json=bodies(encounters.head(5)), timeout=30).raise_for_status()
    after = requests.get(f"{api}/metrics", timeout=10).text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("readmission_http_requests_total", route="/predict", method="POST", status="200") == 3
    assert delta("readmission_http_requests_total", route="/predict", method="POST", status="422") == 1
    assert delta("readmission_http_requests_total", route="/predict/batch", method="POST", status="200") == 1
    assert delta("readmission_http_request_duration_seconds_count", route="/predict", method="POST") == 4
    assert delta("readmission_predictions_total") == 8 == delta("readmission_prediction_probability_count")
    assert delta("readmission_batch_rows_count") == 1 and delta("readmission_batch_rows_sum") == 5
    buckets = [
        metric(after, "readmission_http_request_duration_seconds_bucket", route="/predict", le=le)
        for le in ("0.001", "0.05", "5.0", "+Inf")
    ]
    assert buckets == sorted(buckets) and buckets[-1] == metric(
        after, "readmission_http_request_duration_seconds_count", route="/predict", method="POST"
    )
    assert delta("readmission_http_request_duration_seconds_bucket", route="/predict", le="5.0") == 4
    version = requests.get(f"{api}/ready", timeout=10).json()["model_version"]
    assert metric(after, "readmission_model_version_info", version=version) == 1
    assert metric(after, "readmission_model_reloads_total", outcome="success", trigger="startup") == 1


# --- reloading ------------------------------------------------------------------------------------


def test_reload_needs_the_bearer_token(api):
    missing = requests.post(f"{api}/reload", timeout=10)
    wrong = requests.post(f"{api}/reload", headers={"Authorization": "Bearer guess"}, timeout=30)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.status_code == 403
    unchanged = requests.post(f"{api}/reload", headers=AUTH, timeout=60)
    assert unchanged.status_code == 200 and unchanged.json()["outcome"] == "unchanged"


def test_reload_swaps_in_a_promoted_version_while_requests_keep_succeeding(api, registry_settings, first_version):
    failures, versions, stop = [], set(), threading.Event()

    answers = []

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{api}/predict", json=EXAMPLE_ENCOUNTER, timeout=30)
                except requests.RequestException as exc:  # a dropped connection is a failed request too
                    failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])
                    answers.append(response.json()["model_version"])
                else:
                    failures.append((response.status_code, response.text))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        second = register_model(registry_settings, seed=1)  # registered and promoted to @production
        assert requests.get(f"{api}/ready", timeout=10).json()["model_version"] == first_version  # polling is off
        reload = requests.post(f"{api}/reload", headers=AUTH, timeout=120)
        assert reload.json() == {"outcome": "loaded", "model_version": second, "previous_version": first_version}
        wait_until(lambda: second in versions, timeout=30, what="an answer of the new version")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert versions == {first_version, second}
    assert answers[-1] == second and answers.count(second) >= len(threads)  # every client kept being answered
    assert requests.get(f"{api}/model", timeout=10).json()["version"] == second
    text = requests.get(f"{api}/metrics", timeout=10).text
    assert metric(text, "readmission_model_version_info", version=second) == 1
    assert metric(text, "readmission_model_version_info", version=first_version) == 0
    assert metric(text, "readmission_model_reloads_total", outcome="success", trigger="http") == 1


# --- fuzzing: no input is a server error ---------------------------------------------------------


def test_no_generated_request_is_a_server_error(api):
    """schemathesis, valid and invalid data for every operation of the OpenAPI schema: never a 5xx."""
    operations = [result.ok() for result in schemathesis.openapi.from_url(f"{api}/openapi.json").get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "POST /predict",
        "POST /predict/batch",
        "POST /reload",
    }
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
            )
            def no_server_error(case) -> None:
                response = case.call(base_url=api, timeout=30)
                assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"

            try:
                no_server_error()
            except Unsatisfiable:  # no invalid request exists (an operation without parameters or body)
                assert mode == schemathesis.GenerationMode.NEGATIVE and not operation.body
