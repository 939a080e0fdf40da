"""Clients of the data sources: the EC2 data API over HTTP.

The DAG, the CLI and the tests fetch batches through these functions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pandas as pd
import requests

from readmission import encounter_columns


class SourceUnavailable(RuntimeError):
    """The data API (or the instance it runs on) does not answer: skip, do not fail."""


class SourceExhausted(RuntimeError):
    """Every batch has been served; the data API must be restarted to start over."""


@dataclass(frozen=True)
class Batch:
    """One batch as the data API served it: rows are text, as they are in the file."""

    number: int
    total_batches: int
    rows: pd.DataFrame

    @property
    def size(self) -> int:
        return len(self.rows)


def _url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def data_api_healthy(base_url: str, timeout: float = 5.0) -> bool:
    """True when the data API answers its health check."""
    try:
        return requests.get(_url(base_url, "/health"), timeout=timeout).ok
    except requests.RequestException:
        return False


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as served (JSON objects keyed by column) -> a text DataFrame with the source columns.

    Values stay as they came (strings, `?`, `None`); JSON null becomes a missing value.
    Columns beyond the 50 source columns are kept so validation can name them.
    """
    if not rows:
        return pd.DataFrame(columns=list(encounter_columns.COLUMNS), dtype=object)
    return pd.DataFrame(rows, dtype=object)


def fetch_batch(base_url: str, batch: int | None = None, timeout: float = 60.0) -> Batch:
    """Fetch batch `batch` (or the current one) from the data API.

    Raises SourceUnavailable when the API cannot be reached, SourceExhausted when every
    batch has been served, LookupError for a batch number the API does not have, and
    ValueError for a body that is not JSON.
    """
    params = {"batch": batch} if batch is not None else None
    try:
        response = requests.get(_url(base_url, "/get_data"), params=params, timeout=timeout)
    except requests.RequestException as exc:
        raise SourceUnavailable(f"data API at {base_url} does not answer: {exc}") from exc
    if response.status_code == 404:
        raise LookupError(f"data API has no batch {batch}: {response.text[:200]}")
    if response.status_code == 410:
        raise SourceExhausted(response.json().get("message", "every batch has been served"))
    if response.status_code >= 500:
        raise SourceUnavailable(f"data API at {base_url} answered {response.status_code}")
    response.raise_for_status()
    try:
        body = msgspec.json.decode(response.content)  # about twice as fast as the json module on 15,000 rows
    except msgspec.DecodeError as exc:
        raise ValueError(f"data API at {base_url} answered with a body that is not JSON: {exc}") from exc
    return Batch(
        number=int(body["batch_number"]), total_batches=int(body["total_batches"]), rows=rows_frame(body["rows"])
    )
