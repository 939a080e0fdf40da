"""The EC2 data API: the data set served one batch at a time, a new batch every interval.

The data set is read once at start-up and cut, in file order, into batches of
`BATCH_SIZE` rows numbered from 1 (the last one may be shorter). Each batch is kept
only as the gzip-compressed bytes of its JSON body: the whole 101,766-row data set
then takes a few MB instead of the hundreds a DataFrame would, and gzip clients get
the stored bytes as they are.

    GET  /get_data            the current batch; it advances every BATCH_INTERVAL_SECONDS
                              from start-up, and is 410 Gone once every batch has been served
    GET  /get_data?batch=N    batch N, whatever the time (404 if there is no batch N)
    POST /restart             start over from batch 1, now (bearer token DATA_API_ADMIN_TOKEN)
    GET  /health              status, total_batches, current_batch

A batch body is `{"batch_number", "total_batches", "batch_size", "rows": [...]}` where
`batch_size` is the configured BATCH_SIZE (the last batch may hold fewer rows) and each
row maps the data set's column names to the file's strings (`?` and `None` included);
an empty cell is `null`. The batch clock lives in the process: run ONE worker.

`POST /restart` resets the rotation for every reader, so it needs the bearer token
`DATA_API_ADMIN_TOKEN` (401 without one, 403 with a wrong one, 403 when no token is set: then
only restarting the process starts over). `GET /get_data` and `/health` stay open, as the
design has them; the security group opens the port only to the Airflow workers.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import flask
import pandas as pd
from werkzeug.exceptions import HTTPException

from readmission.config import Settings, get_settings
from readmission.dataset import DatasetError, iter_dataset_chunks

logger = logging.getLogger(__name__)

_POSITIVE_INTEGER = re.compile(r"[0-9]+")
_SLICE_ROWS = 1_000


def load_batches(location: str, batch_size: int) -> list[bytes]:
    """The data set's batches, in file order, as gzip-compressed JSON bodies (batch 1 first).

    Raises DatasetError when the data set cannot be read or holds no rows.
    """
    try:
        # Every body names total_batches, so count the rows before serializing the first batch.
        rows = sum(len(chunk) for chunk in iter_dataset_chunks(location, batch_size))
        if not rows:
            raise DatasetError(f"the data set at {location} holds no rows")
        total = math.ceil(rows / batch_size)
        return [
            _gzip_body(chunk, number, total, batch_size)
            for number, chunk in enumerate(iter_dataset_chunks(location, batch_size), start=1)
        ]
    except (ValueError, OSError, EOFError) as exc:  # pandas parse errors are ValueErrors, bad gzip an OSError
        raise DatasetError(f"cannot load the data set from {location}: {exc}") from exc


def _gzip_body(chunk: pd.DataFrame, number: int, total: int, batch_size: int) -> bytes:
    """The gzip-compressed JSON body of one batch; an empty cell becomes null."""
    compressor = zlib.compressobj(wbits=31)  # 31: a gzip container, what Content-Encoding: gzip means
    head = f'{{"batch_number": {number}, "total_batches": {total}, "batch_size": {batch_size}, "rows": ['
    parts = [compressor.compress(head.encode())]
    # Serialized a slice at a time, so the whole batch never sits in memory as JSON text.
    for start in range(0, len(chunk), _SLICE_ROWS):
        records = chunk.iloc[start : start + _SLICE_ROWS].to_json(orient="records")[1:-1]
        parts.append(compressor.compress((("," if start else "") + records).encode()))
    parts.append(compressor.compress(b"]}") + compressor.flush())
    return b"".join(parts)


@dataclass
class BatchFeed:
    """The served batches and the clock that says which one is current."""

    bodies: list[bytes]
    interval: float
    clock: Callable[[], float]
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def total(self) -> int:
        return len(self.bodies)

    def current(self) -> int | None:
        """The batch whose window the clock is in; None once every window has passed."""
        number = int((self.clock() - self.started) // self.interval) + 1
        return number if number <= self.total else None

    def restart(self) -> None:
        self.started = self.clock()


def json_error(status: int, error: str, message: str) -> flask.Response:
    """A JSON error response: `{"error": <short code>, "message": <what went wrong>}`."""
    response = flask.jsonify(error=error, message=message)
    response.status_code = status
    return response


def _gzip_response(body: bytes) -> flask.Response:
    """The stored gzip body as is when the client accepts gzip, else decompressed."""
    if flask.request.accept_encodings.quality("gzip") > 0:
        response = flask.Response(body, mimetype="application/json")
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = flask.Response(gzip.decompress(body), mimetype="application/json")
    response.vary.add("Accept-Encoding")
    return response


def _requested_batch(feed: BatchFeed) -> int | flask.Response | None:
    """The batch number of `?batch=N`, None without it, or a 400/404 error response."""
    values = flask.request.args.getlist("batch")
    if not values:
        return None
    if len(values) > 1 or not _POSITIVE_INTEGER.fullmatch(values[0]) or int(values[0]) < 1:
        return json_error(400, "bad_request", "batch must be one integer >= 1, got " + ", ".join(map(repr, values)))
    number = int(values[0])
    if number > feed.total:
        return json_error(404, "not_found", f"no batch {number}: the batches are 1 to {feed.total}")
    return number


def create_app(settings: Settings | None = None, clock: Callable[[], float] = time.monotonic) -> flask.Flask:
    """The data API over the data set at `settings.dataset_path`, loaded now.

    `clock` tells the seconds that decide the current batch; tests pass their own.
    Raises DatasetError when the data set cannot be loaded.
    """
    settings = settings or get_settings()
    loaded_at = time.perf_counter()
    bodies = load_batches(settings.dataset_path, settings.batch_size)
    logger.info(
        "data API: %d batches of up to %d rows from %s in %.1f s",
        len(bodies),
        settings.batch_size,
        settings.dataset_path,
        time.perf_counter() - loaded_at,
    )
    # The clock starts once the data set is loaded, so a slow load does not eat batch 1's window.
    feed = BatchFeed(bodies, settings.batch_interval_seconds, clock)
    app = flask.Flask(__name__)

    @app.get("/get_data")
    def get_data() -> flask.Response:
        number = _requested_batch(feed)
        if isinstance(number, flask.Response):
            return number
        number = number or feed.current()
        if number is None:
            return json_error(
                410, "exhausted", f"all {feed.total} batches have been served; POST /restart to start over"
            )
        return _gzip_response(feed.bodies[number - 1])

    admin_token = settings.data_api_admin_token.get_secret_value()

    @app.post("/restart")
    def restart() -> flask.Response:
        if not admin_token:
            return json_error(
                403,
                "forbidden",
                "restarting over HTTP is disabled because DATA_API_ADMIN_TOKEN is not "
                "set; restart the service to start over from batch 1",
            )
        scheme, _, token = flask.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            response = json_error(401, "unauthorized", "a bearer token (DATA_API_ADMIN_TOKEN) is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if not secrets.compare_digest(token.encode(), admin_token.encode()):
            return json_error(403, "forbidden", "wrong admin token")
        feed.restart()
        return flask.jsonify(status="restarted", current_batch=feed.current(), total_batches=feed.total)

    @app.get("/health")
    def health() -> flask.Response:
        current = feed.current()
        return flask.jsonify(
            status="ok",
            total_batches=feed.total,
            current_batch=current,
            exhausted=current is None,
            batch_size=settings.batch_size,
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> flask.Response:
        return json_error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> flask.Response:
        logger.exception("data API: unexpected error")
        return json_error(500, "internal_error", f"unexpected {type(exc).__name__}; see the data API's log")

    return app


def serve(settings: Settings | None = None) -> None:
    """Serve the data API with Flask's own server on DATA_API_HOST:DATA_API_PORT, for local use.

    Production runs it under gunicorn with one worker (see ec2_api/).
    """
    settings = settings or get_settings()
    create_app(settings).run(host=settings.data_api_host, port=settings.data_api_port)
