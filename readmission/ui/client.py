"""HTTP client of the inference API, for the clinician UI.

Every call measures its round-trip latency, and every failure becomes an `ApiError` whose
message a clinician can read: the UI shows it as it is, never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests


class ApiError(RuntimeError):
    """The API did not give an answer the UI can use; the message says why, in plain words."""


class ApiUnavailable(ApiError):
    """The API cannot be reached, timed out, or failed on its side."""


class ApiNotReady(ApiError):
    """The API runs but has no model loaded yet."""


class ApiRejected(ApiError):
    """The API refused the request (bad input, too many rows); `detail` is its explanation."""

    def __init__(self, message: str, status: int, detail: Any = None):
        super().__init__(message)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Timed:
    """An API answer and the round trip it took, in milliseconds."""

    body: Any
    latency_ms: float


def _detail_text(detail: Any) -> str:
    """FastAPI's `detail` (a string, or a list of validation errors) as one readable line."""
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, Mapping):
                where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
                parts.append(f"{where}: {error.get('msg', error)}" if where else str(error.get("msg", error)))
            else:
                parts.append(str(error))
        return "; ".join(parts)
    return str(detail)


class InferenceClient:
    """The inference API at `base_url` (the `API_URL` setting)."""

    def __init__(
        self, base_url: str, timeout: float = 30.0, session: requests.Session | None = None, api_key: str = ""
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        if api_key:  # the UI's own key (API_KEY); the service names it in its per-key metrics
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Timed:
        started = time.perf_counter()
        try:
            response = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        except requests.Timeout:
            raise ApiUnavailable(
                f"The prediction service at {self.base_url} did not answer within {self.timeout:g} s."
            ) from None
        except requests.RequestException:
            raise ApiUnavailable(f"The prediction service at {self.base_url} cannot be reached.") from None
        latency_ms = (time.perf_counter() - started) * 1000
        body = self._json(response)
        if response.ok:
            return Timed(body, latency_ms)
        detail = body.get("detail", body) if isinstance(body, dict) else body
        if response.status_code in (401, 403):
            raise ApiUnavailable(
                f"The prediction service refused this application's key (HTTP {response.status_code}"
                "). Tell the platform team: the UI's API_KEY must be listed in the API's API_KEYS."
            )
        if response.status_code == 503:
            raise ApiNotReady(f"The prediction service at {self.base_url} is not ready: {_detail_text(detail)}.")
        if response.status_code >= 500:
            raise ApiUnavailable(f"The prediction service failed (HTTP {response.status_code}). Please try again.")
        raise ApiRejected(
            f"The prediction service refused the request (HTTP {response.status_code}): {_detail_text(detail)}",
            response.status_code,
            detail,
        )

    @staticmethod
    def _json(response: requests.Response) -> Any:
        """The body as JSON; an error page that is not JSON becomes `{"detail": <its text>}`."""
        try:
            return response.json()
        except ValueError:
            if response.ok:
                raise ApiUnavailable(
                    f"The prediction service answered something that is not JSON (HTTP {response.status_code})."
                ) from None
            return {"detail": response.text.strip()[:500] or response.reason}

    def ready(self) -> dict:
        """The `/ready` answer; raises `ApiNotReady` while no model is loaded, `ApiUnavailable` when down."""
        return self._call("GET", "/ready").body

    def model(self) -> dict:
        """The card of the model in service: name, version, alias, run id, metrics, lineage, loaded-at."""
        return self._call("GET", "/model").body

    def predict(self, encounter: Mapping[str, Any], explain: bool = False) -> Timed:
        """Score one encounter (raw column names and values); with `explain`, the fields that moved its risk."""
        return self._call("POST", "/predict", json=dict(encounter), params={"explain": "true"} if explain else None)

    def predict_batch(self, encounters: Sequence[Mapping[str, Any]]) -> Timed:
        """Score many encounters in one request."""
        return self._call("POST", "/predict/batch", json=[dict(e) for e in encounters])
