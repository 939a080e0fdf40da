"""Access to the inference API: keys, rights, per-key metrics and rate limit, and no patient identifier in its logs.

One real server for the module (its image's command, one worker) with three keys: `clinic` may
predict and read the model card, `dashboard` may only read the card, `bursty` may predict and
runs into the rate limit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from readmission.cli import main
from readmission.config import Settings
from readmission.dataset import synthetic_dataset
from readmission.loadtest import request_body
from readmission.serving.auth import ApiKeysError, RateLimiter, key_hash, new_key, parse_api_keys, well_formed
from readmission.serving.schemas import EXAMPLE_ENCOUNTER
from tests.browser import SwaggerPage
from tests.factories import metric, register_model
from tests.servers import REPO_ROOT, start_inference_api

RATE_LIMIT = 20  # requests per second per key; the other tests stay far below it
GUARDED = [("post", "/predict"), ("post", "/predict/batch"), ("get", "/model")]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {name: new_key(name)[0] for name in ("clinic", "dashboard", "bursty")}


@pytest.fixture(scope="module")
def guarded_api(keys, tmp_path_factory):
    """The API with keys required; its URL and the path of its log."""
    settings = Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("auth-registry"))
    register_model(settings)
    entries = [
        f"clinic:{key_hash(keys['clinic'])}",
        f"dashboard:{key_hash(keys['dashboard'])}:model",
        f"bursty:{key_hash(keys['bursty'])}:predict",
    ]
    folder = tmp_path_factory.mktemp("auth-api")
    server, url = start_inference_api(
        {
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "API_KEYS": ",".join(entries),
            "REQUIRE_API_KEYS": "true",
            "API_RATE_LIMIT": str(RATE_LIMIT),
            "MODEL_POLL_SECONDS": "3600",
        },
        folder,
    )
    yield url, server.log_path
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> requests.Response:
    body = {"json": EXAMPLE_ENCOUNTER if path == "/predict" else [EXAMPLE_ENCOUNTER]} if method == "post" else {}
    return requests.request(method, f"{url}{path}", headers=headers, timeout=30, **body)


# --- keys and their entries ----------------------------------------------------------------------


def test_a_new_key_opens_its_entry_and_the_entry_holds_only_its_hash():
    key, entry = new_key("ward-7")
    (caller,) = parse_api_keys(entry).values()
    assert well_formed(key) and key not in entry
    assert parse_api_keys(entry)[key_hash(key)].name == "ward-7" == caller.name
    assert caller.rights == {"predict", "model"}
    assert new_key("ward-7")[0] != key


@pytest.mark.parametrize(
    "entries, problem",
    [
        ("ui", "entry 1: expected name:sha256hex"),
        (f"ui:{'a' * 64},Bad Name:{'b' * 64}", "entry 2: the name 'Bad Name'"),
        ("ui:not-a-hash", "entry 1 (ui): the hash is not 64 hex digits"),
        (f"ui:{'a' * 64}:delete", "entry 1 (ui): rights are predict and model"),
        (f"ui:{'a' * 64},ui:{'b' * 64}", "entry 2 (ui): the name or the hash is listed twice"),
    ],
)
def test_a_malformed_api_keys_setting_is_refused_naming_the_entry(entries, problem):
    with pytest.raises(ApiKeysError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_api_keys(entries)


def test_the_rate_limit_lets_one_seconds_worth_through_then_asks_to_wait():
    clock = FakeClock()
    limiter = RateLimiter(2, clock)
    assert [limiter.retry_after("a"), limiter.retry_after("a"), limiter.retry_after("a")] == [0, 0, 1]
    assert limiter.retry_after("b") == 0  # every key has its own bucket
    clock.now += 0.5
    assert limiter.retry_after("a") == 0
    assert RateLimiter(0, clock).retry_after("a") == 0  # 0: no limit


def test_apikey_new_prints_the_key_once_and_the_line_for_the_secret(capsys):
    assert main(["apikey", "new", "ui", "--rights", "predict"]) == 0
    out = capsys.readouterr()
    key_line, entry_line = out.out.splitlines()
    key, entry = key_line.removeprefix("key: "), entry_line.removeprefix("API_KEYS entry: ")
    assert parse_api_keys(entry)[key_hash(key)].rights == {"predict"}
    assert "shown only now" in out.err and key not in out.err


# --- the running service ---------------------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.parametrize("method, path", GUARDED)
def test_without_a_key_or_with_an_unknown_one_the_answer_is_401(guarded_api, method, path):
    url, _ = guarded_api
    missing = call(url, method, path)
    unknown = call(url, method, path, bearer(new_key("stranger")[0]))
    assert missing.status_code == unknown.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in missing.json()["detail"] and unknown.json()["detail"] == "unknown API key"


@pytest.mark.servers
def test_a_known_key_without_the_right_gets_403_and_with_it_an_answer(guarded_api, keys):
    url, _ = guarded_api
    assert call(url, "post", "/predict", bearer(keys["dashboard"])).status_code == 403
    assert call(url, "post", "/predict/batch", bearer(keys["dashboard"])).status_code == 403
    assert call(url, "get", "/model", bearer(keys["dashboard"])).status_code == 200
    assert call(url, "get", "/model", bearer(keys["bursty"])).status_code == 403
    assert "probability" in call(url, "post", "/predict", bearer(keys["clinic"])).json()
    assert call(url, "post", "/predict/batch", bearer(keys["clinic"])).json()["rows"] == 1


@pytest.mark.servers
def test_probes_and_prometheus_need_no_key(guarded_api):
    url, _ = guarded_api
    answers = [requests.get(f"{url}{path}", timeout=10).status_code for path in ("/health", "/ready", "/metrics")]
    assert answers == [200, 200, 200]


@pytest.mark.servers
def test_requests_are_counted_per_key_name_and_the_key_never_shows(guarded_api, keys):
    url, _ = guarded_api
    before = requests.get(f"{url}/metrics", timeout=10).text
    for _ in range(3):
        call(url, "post", "/predict", bearer(keys["clinic"])).raise_for_status()
    call(url, "post", "/predict", bearer(keys["dashboard"]))
    after = requests.get(f"{url}/metrics", timeout=10).text

    def delta(**labels: str) -> float:
        return metric(after, "readmission_api_key_requests_total", **labels) - metric(
            before, "readmission_api_key_requests_total", **labels
        )

    assert delta(key="clinic", route="/predict", status="200") == 3
    assert delta(key="dashboard", route="/predict", status="403") == 1
    assert not any(key in after or key_hash(key) in after for key in keys.values())


@pytest.mark.servers
def test_a_key_over_the_rate_limit_is_answered_429_with_retry_after(guarded_api, keys):
    url, _ = guarded_api
    with requests.Session() as session:
        answers = [
            session.post(f"{url}/predict", json=EXAMPLE_ENCOUNTER, headers=bearer(keys["bursty"]), timeout=10)
            for _ in range(3 * RATE_LIMIT)
        ]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and {a.status_code for a in answers} == {200, 429}
    assert int(refused[0].headers["Retry-After"]) >= 1 and "API_RATE_LIMIT" in refused[0].json()["detail"]
    assert call(url, "post", "/predict", bearer(keys["clinic"])).status_code == 200  # other keys are not held back


@pytest.mark.servers
def test_the_openapi_page_documents_the_key_scheme_on_the_guarded_routes_only(guarded_api):
    url, _ = guarded_api
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        **spec["components"]["securitySchemes"]["ApiKey"],
        "type": "http",
        "scheme": "bearer",
    }
    for method, path in GUARDED:
        assert spec["paths"][path][method]["security"] == [{"ApiKey": []}]
        assert {"401", "403"} <= set(spec["paths"][path][method]["responses"])
    assert "security" not in spec["paths"]["/health"]["get"] and "security" not in spec["paths"]["/metrics"]["get"]
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200


def test_try_it_out_on_the_docs_page_works_with_a_key(guarded_api, keys, browser):
    """The OpenAPI page in a browser with no way out of 127.0.0.1: its scripts come from the API itself, and
    "Authorize" with a key then "Try it out" on /predict answers 200; without a key, 401."""
    url, _ = guarded_api
    docs = SwaggerPage(browser, f"{url}/docs")
    assert docs.try_predict() == "401"
    docs.authorize(keys["clinic"])
    assert docs.try_predict() == "200"
    assert '"risk_band"' in docs.response_body()


@pytest.mark.servers
def test_patient_identifiers_and_free_text_appear_in_no_log_and_no_metric(guarded_api, keys):
    url, log_path = guarded_api
    marks = {"encounter_id": "908172635", "patient_nbr": "564738291", "note": "Jane-Roe-free-text-ZQX"}
    rows = synthetic_dataset(5, seed=4).assign(encounter_id=marks["encounter_id"], patient_nbr=marks["patient_nbr"])
    as_csv = rows.to_csv(index=False)
    bad_csv = rows.assign(number_inpatient=marks["note"]).to_csv(index=False)
    single = {**request_body(rows.iloc[0].to_dict()), "patient_nbr": marks["patient_nbr"], "race": marks["note"]}
    headers = {**bearer(keys["clinic"]), "Content-Type": "text/csv"}
    scored = requests.post(f"{url}/predict/batch", data=as_csv, headers=headers, timeout=30)
    refused = requests.post(f"{url}/predict/batch", data=bad_csv, headers=headers, timeout=30)
    requests.post(f"{url}/predict", json=single, headers=bearer(keys["clinic"]), timeout=30)
    assert scored.status_code == 200 and refused.status_code == 422
    assert [e["loc"][:2] for e in refused.json()["detail"]] == [["body", i] for i in range(5)]  # rows by position
    assert marks["encounter_id"] not in refused.text and marks["patient_nbr"] not in refused.text

    logged = log_path.read_text() + requests.get(f"{url}/metrics", timeout=10).text
    assert "serving" in logged  # the log is the one the server writes
    assert [mark for mark in marks.values() if mark in logged] == []


def test_without_api_keys_the_launcher_warns_and_with_require_api_keys_it_refuses_to_start(tmp_path):
    from readmission.serving.app import create_app

    environment = {"DATA_DIR": str(tmp_path), "REQUIRE_API_KEYS": "true", "API_KEYS": "", "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(
        [sys.executable, "-m", "readmission.serving.server"],
        env=environment,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "REQUIRE_API_KEYS is set but API_KEYS is empty" in refused.stderr
    with pytest.raises(ApiKeysError):
        create_app(Settings(_env_file=None, data_dir=tmp_path, require_api_keys=True))


def test_without_api_keys_the_service_says_so_at_start(tmp_path, caplog):
    from readmission.serving.app import create_app

    create_app(Settings(_env_file=None, data_dir=tmp_path))
    assert any(r.levelname == "WARNING" and "API_KEYS is not set" in r.getMessage() for r in caplog.records)
