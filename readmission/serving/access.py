"""API keys at the door of the inference service: the `ApiKey` security scheme of the routes that need a key,
and the admission of each request (who it is, whether its key has the right, whether it is over its rate).

The keys themselves (format, hashing, parsing API_KEYS, the rate limiter) are `readmission.serving.auth`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from readmission.config import Settings
from readmission.serving.api_models import ErrorMessage
from readmission.serving.auth import Caller, RateLimiter, accepted_keys, key_hash

API_KEY_DESCRIPTION = (
    "An API key (`rk_...`) made by `readmission apikey new NAME`; API_KEYS holds its SHA-256. "
    "Needed on /predict, /predict/batch and /model when API_KEYS is set."
)


class AccessControl:
    """The keys the service accepts (key hash -> caller; None: no key needed) and their rate limit."""

    def __init__(self, settings: Settings):
        self.callers = accepted_keys(settings.api_keys.get_secret_value(), settings.require_api_keys)
        self.limiter = RateLimiter(settings.api_rate_limit / settings.api_workers)

    def caller(self, credentials: HTTPAuthorizationCredentials | None) -> Caller | None:
        """Who presented the key (None when no key is needed): 401 without a key or with an unknown one."""
        if self.callers is None:
            return None
        if credentials is None:
            raise HTTPException(
                401,
                "an API key is required: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": 'Bearer realm="readmission"'},
            )
        caller = self.callers.get(key_hash(credentials.credentials))
        if caller is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return caller

    def admit(self, caller: Caller, right: str) -> None:
        """403 when the caller's key lacks `right`, 429 when it is over the rate limit."""
        if right not in caller.rights:
            raise HTTPException(403, f"the API key {caller.name!r} may not use this route (it lacks `{right}`)")
        if wait := self.limiter.retry_after(caller.name):
            raise HTTPException(
                429,
                f"the API key {caller.name!r} is over API_RATE_LIMIT requests per second",
                headers={"Retry-After": str(wait)},
            )


class ApiKey(HTTPBearer):
    """The `ApiKey` security scheme of a route needing `right`: FastAPI documents it in the OpenAPI page (so
    "Authorize" and "Try it out" send the key) and calls it for each request, which it admits or refuses.

    One dependency doing both (rather than a check depending on an HTTPBearer): FastAPI's dependency
    resolution, not the hash, is most of what a key costs per request.
    """

    def __init__(self, right: str):
        super().__init__(auto_error=False, scheme_name="ApiKey", description=API_KEY_DESCRIPTION)
        self.right = right

    async def __call__(self, request: Request) -> None:
        access: AccessControl = request.app.state.access
        if access.callers is None:
            return
        caller = access.caller(await super().__call__(request))
        assert caller is not None, "keys are required, so a caller was found or refused"
        request.state.api_key = caller.name  # the per-key metrics count refusals too
        access.admit(caller, self.right)


CAN_PREDICT, CAN_READ_MODEL = Depends(ApiKey("predict")), Depends(ApiKey("model"))
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorMessage, "description": "No API key, or an unknown one (API_KEYS is set)."},
    403: {"model": ErrorMessage, "description": "The API key lacks the right this route needs."},
    429: {"model": ErrorMessage, "description": "The API key is over API_RATE_LIMIT; see Retry-After."},
}
