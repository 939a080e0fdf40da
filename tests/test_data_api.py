"""The EC2 data API over HTTP: Flask's test client with an injected clock, and the real gunicorn server."""

from __future__ import annotations

import gzip
import http.server
import json
import threading

import pandas as pd
import pytest
import requests

from readmission.data_api import create_app
from readmission.dataset import DatasetError, load_dataset, synthetic_dataset
from readmission.sources import SourceExhausted, fetch_batch, rows_frame
from tests.servers import start_data_api, wait_until

INTERVAL = 60.0
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class FakeClock:
    """A clock the test moves by hand: `create_app` reads it instead of time.monotonic."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def strict_json(text: str | bytes):
    """Parse JSON, refusing NaN and Infinity (which Python's json accepts by default)."""

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def serve(make_settings, synthetic_csv):
    """Build the data API on a data set file with a fake clock: serve(batch_size=...) -> (client, clock)."""

    def factory(batch_size: int = 1_000, dataset_path=synthetic_csv, admin_token: str = ADMIN_TOKEN):
        clock = FakeClock()
        settings = make_settings(
            dataset_path=str(dataset_path),
            batch_size=batch_size,
            batch_interval_seconds=INTERVAL,
            data_api_admin_token=admin_token,
        )
        return create_app(settings, clock=clock).test_client(), clock

    return factory


def get_batch(client, query: str = "") -> dict:
    response = client.get(f"/get_data{query}")
    assert response.status_code == 200, response.text
    assert response.headers.get("Content-Encoding") is None
    return strict_json(response.text)


# --- batches ---------------------------------------------------------------------------


def test_batches_hold_batch_size_rows_and_the_last_one_the_rest(serve):
    client, _ = serve(batch_size=1_500)

    bodies = [get_batch(client, f"?batch={n}") for n in (1, 2, 3)]

    assert [len(body["rows"]) for body in bodies] == [1_500, 1_500, 1_000]
    assert [body["batch_number"] for body in bodies] == [1, 2, 3]
    assert {body["total_batches"] for body in bodies} == {3}
    assert {body["batch_size"] for body in bodies} == {1_500}


def test_batches_cut_the_file_in_order_with_its_values_as_they_are(serve, synthetic_csv):
    client, _ = serve(batch_size=1_000)

    rows = [row for n in (1, 2, 3, 4) for row in get_batch(client, f"?batch={n}")["rows"]]

    served = rows_frame(rows)
    expected = load_dataset(synthetic_csv).astype(object)
    assert list(served.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(served, expected)


def test_question_marks_and_none_stay_strings_and_an_empty_cell_is_null(serve, tmp_path):
    frame = synthetic_dataset(rows=20, seed=3)
    frame.loc[0, "weight"] = None  # written as an empty cell
    frame.loc[1, ["max_glu_serum", "A1Cresult"]] = "None"
    frame.loc[2, ["race", "payer_code"]] = "?"
    frame.to_csv(tmp_path / "cells.csv", index=False)
    client, _ = serve(batch_size=50, dataset_path=tmp_path / "cells.csv")

    response = client.get("/get_data?batch=1")

    assert "NaN" not in response.text
    rows = strict_json(response.text)["rows"]
    assert rows[0]["weight"] is None
    assert rows[1]["max_glu_serum"] == rows[1]["A1Cresult"] == "None"
    assert rows[2]["race"] == rows[2]["payer_code"] == "?"
    assert all(isinstance(value, str) for row in rows[1:] for value in row.values())


# --- the batch clock -------------------------------------------------------------------


def test_the_current_batch_advances_every_interval(serve):
    client, clock = serve(batch_size=1_000)

    served = []
    for _ in range(4):
        served.append(get_batch(client)["batch_number"])
        clock.advance(INTERVAL - 0.001)
        served.append(get_batch(client)["batch_number"])
        clock.advance(0.001)

    assert served == [1, 1, 2, 2, 3, 3, 4, 4]


def test_once_every_batch_is_served_get_data_is_gone_with_a_message(serve):
    client, clock = serve(batch_size=1_000)
    clock.advance(4 * INTERVAL)

    response = client.get("/get_data")

    assert response.status_code == 410
    body = strict_json(response.text)
    assert body["error"] == "exhausted"
    assert "restart" in body["message"]
    assert strict_json(client.get("/health").text)["exhausted"] is True
    assert get_batch(client, "?batch=2")["batch_number"] == 2  # a named batch is still there


def test_restart_starts_over_from_batch_one(serve):
    client, clock = serve(batch_size=1_000)
    clock.advance(10 * INTERVAL)

    response = client.post("/restart", headers=ADMIN)

    assert response.status_code == 200
    assert strict_json(response.text)["current_batch"] == 1
    assert get_batch(client)["batch_number"] == 1
    clock.advance(INTERVAL)
    assert get_batch(client)["batch_number"] == 2


@pytest.mark.parametrize(
    "headers, status",
    [({}, 401), ({"Authorization": "Bearer guess"}, 403), ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401)],
)
def test_restart_without_the_admin_token_is_refused_and_changes_nothing(serve, headers, status):
    client, clock = serve(batch_size=1_000)
    clock.advance(2 * INTERVAL)

    response = client.post("/restart", headers=headers)

    assert response.status_code == status and set(strict_json(response.text)) == {"error", "message"}
    assert get_batch(client)["batch_number"] == 3
    assert client.get("/health").status_code == 200 and client.get("/get_data?batch=1").status_code == 200


def test_restart_over_http_is_disabled_without_an_admin_token(serve):
    client, clock = serve(batch_size=1_000, admin_token="")
    clock.advance(2 * INTERVAL)

    response = client.post("/restart", headers={"Authorization": "Bearer "})

    assert response.status_code == 403 and "DATA_API_ADMIN_TOKEN is not set" in strict_json(response.text)["message"]
    assert get_batch(client)["batch_number"] == 3


def test_a_named_batch_is_served_whatever_the_time(serve):
    client, clock = serve(batch_size=1_000)
    clock.advance(INTERVAL)

    assert get_batch(client, "?batch=4")["batch_number"] == 4
    assert get_batch(client, "?batch=1")["batch_number"] == 1
    assert get_batch(client)["batch_number"] == 2


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("number", [5, 999_999])
def test_an_unknown_batch_is_404_json(serve, number):
    client, _ = serve(batch_size=1_000)

    response = client.get(f"/get_data?batch={number}")

    assert response.status_code == 404
    body = strict_json(response.text)
    assert body["error"] == "not_found"
    assert f"no batch {number}" in body["message"]


@pytest.mark.parametrize("query", ["batch=abc", "batch=0", "batch=-1", "batch=1.5", "batch=", "batch=%202",
                                   "batch=1&batch=2"])  # fmt: skip
def test_a_malformed_batch_query_is_400_naming_the_problem(serve, query):
    client, _ = serve(batch_size=1_000)

    response = client.get(f"/get_data?{query}")

    assert response.status_code == 400
    body = strict_json(response.text)
    assert body["error"] == "bad_request"
    assert "batch must be one integer >= 1" in body["message"]


def test_unknown_parameters_are_ignored(serve):
    client, _ = serve(batch_size=1_000)

    assert get_batch(client, "?format=csv&batch=3")["batch_number"] == 3


@pytest.mark.parametrize(("method", "path", "status"), [("get", "/nowhere", 404), ("get", "/restart", 405),
                                                        ("post", "/get_data", 405)])  # fmt: skip
def test_every_error_is_json(serve, method, path, status):
    client, _ = serve(batch_size=1_000)

    response = getattr(client, method)(path)

    assert response.status_code == status
    assert response.is_json
    assert set(strict_json(response.text)) == {"error", "message"}


def test_a_data_set_that_cannot_be_loaded_raises_a_clear_error(make_settings, tmp_path):
    header_only = tmp_path / "header_only.csv"
    synthetic_dataset(rows=5).head(0).to_csv(header_only, index=False)
    not_gzip = tmp_path / "broken.csv.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    wrong_columns = tmp_path / "wrong.csv"
    wrong_columns.write_text("a,b\n1,2\n")

    for path, problem in [(tmp_path / "missing.csv", "not found"), (header_only, "holds no rows"),
                          (not_gzip, "cannot load"), (wrong_columns, "missing columns")]:  # fmt: skip
        with pytest.raises(DatasetError, match=problem):
            create_app(make_settings(dataset_path=str(path)))


# --- gzip and health -------------------------------------------------------------------


def test_bodies_are_gzipped_only_for_clients_that_accept_gzip(serve):
    client, _ = serve(batch_size=1_000)
    plain = client.get("/get_data?batch=2")

    zipped = client.get("/get_data?batch=2", headers={"Accept-Encoding": "br, gzip;q=0.8"})
    refused = client.get("/get_data?batch=2", headers={"Accept-Encoding": "gzip;q=0, identity"})

    assert zipped.headers["Content-Encoding"] == "gzip"
    assert len(zipped.data) < len(plain.data) / 5
    assert strict_json(gzip.decompress(zipped.data)) == strict_json(plain.data)
    assert "Content-Encoding" not in refused.headers
    assert refused.data == plain.data
    assert "Accept-Encoding" in zipped.headers["Vary"]


def test_health_reports_the_total_and_the_current_batch(serve):
    client, clock = serve(batch_size=1_500)
    clock.advance(INTERVAL)

    response = client.get("/health")

    assert response.status_code == 200
    assert strict_json(response.text) == {"status": "ok", "total_batches": 3, "current_batch": 2,
                                          "exhausted": False, "batch_size": 1_500}  # fmt: skip


# --- the real server (gunicorn) --------------------------------------------------------


@pytest.fixture(scope="module")
def data_api_url(synthetic_csv, tmp_path_factory):
    """The data API under gunicorn on the 4,000-row synthetic file, 1,000-row batches."""
    server, url = start_data_api(synthetic_csv, tmp_path_factory.mktemp("data-api"), batch_size=1_000)
    yield url
    server.stop()


@pytest.mark.servers
def test_the_gunicorn_server_serves_every_batch_to_the_client(data_api_url, synthetic_csv):
    batches = [fetch_batch(data_api_url, n) for n in (1, 2, 3, 4)]

    assert [batch.size for batch in batches] == [1_000] * 4
    assert [batch.total_batches for batch in batches] == [4] * 4
    served = pd.concat([batch.rows for batch in batches], ignore_index=True)
    pd.testing.assert_frame_equal(served, load_dataset(synthetic_csv).astype(object))
    assert fetch_batch(data_api_url).number == 1
    with pytest.raises(LookupError, match="no batch 5"):
        fetch_batch(data_api_url, 5)


@pytest.mark.servers
def test_the_gunicorn_server_gzips_for_gzip_clients_and_answers_json_errors(data_api_url):
    zipped = requests.get(f"{data_api_url}/get_data?batch=4", headers={"Accept-Encoding": "gzip"}, stream=True)
    plain = requests.get(f"{data_api_url}/get_data?batch=4", headers={"Accept-Encoding": "identity"})
    malformed = requests.get(f"{data_api_url}/get_data?batch=x")

    assert zipped.headers["Content-Encoding"] == "gzip"
    assert strict_json(gzip.decompress(zipped.raw.read(decode_content=False))) == strict_json(plain.text)
    assert "Content-Encoding" not in plain.headers
    assert (malformed.status_code, malformed.json()["error"]) == (400, "bad_request")
    assert requests.get(f"{data_api_url}/health").json()["total_batches"] == 4


@pytest.mark.servers
def test_the_gunicorn_server_says_when_it_is_exhausted_and_starts_over(synthetic_csv, tmp_path):
    server, url = start_data_api(synthetic_csv, tmp_path, batch_size=4_000, interval=0.5, admin_token=ADMIN_TOKEN)
    try:
        wait_until(lambda: requests.get(f"{url}/health").json()["exhausted"], timeout=30, what="exhaustion")
        with pytest.raises(SourceExhausted, match="restart"):
            fetch_batch(url)

        restarted = requests.post(f"{url}/restart", headers=ADMIN)

        assert restarted.status_code == 200
        assert restarted.json()["total_batches"] == 1
    finally:
        server.stop()


def test_a_body_that_is_not_json_is_a_clear_error():
    class Maintenance(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>down for maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Maintenance)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ValueError, match="answered with a body that is not JSON"):
            fetch_batch(f"http://127.0.0.1:{server.server_port}", 1)
    finally:
        server.shutdown()
