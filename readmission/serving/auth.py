"""API keys of the inference service: who may call `/predict`, `/predict/batch` and `/model`.

`API_KEYS` holds one entry per program, `name:sha256hex` or `name:sha256hex:rights`, comma-separated:
the SHA-256 of the key, never the key. `rights` is `predict`, `model` or `predict+model` (the
default): a known key without the right a route needs is answered 403, no key or an unknown key
401. `readmission apikey new NAME` makes a key and its entry.

A key is `rk_` followed by 43 URL-safe characters (256 random bits): a long random key needs no
slow password hash, one SHA-256 is as hard to reverse as guessing the key.

`API_RATE_LIMIT` (requests per second per key name, 0 = off) is a token bucket in each worker
process holding one second's worth of requests; the rate is shared out over `API_WORKERS`, so the
service as a whole allows about `API_RATE_LIMIT` per key (the load balancer does not split a
key's requests exactly evenly between workers).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

KEY_PREFIX = "rk_"
RIGHTS = ("predict", "model")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_HEX = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{43}}")


class ApiKeysError(ValueError):
    """`API_KEYS` cannot be read; the message names the entry and what is wrong with it."""


@dataclass(frozen=True)
class Caller:
    """A program that presented a known key: its name and what it may do."""

    name: str
    rights: frozenset[str]


def key_hash(key: str) -> str:
    """The SHA-256 of a key, in hex: what `API_KEYS` stores."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str) -> tuple[str, str]:
    """A new key for `name` and its `API_KEYS` entry (`name:sha256hex`)."""
    if not _NAME.fullmatch(name):
        raise ApiKeysError(f"key name {name!r}: use lower-case letters, digits and . _ - (up to 63)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{name}:{key_hash(key)}"


def well_formed(key: str) -> bool:
    """True when `key` has the shape of a key this service hands out."""
    return bool(_KEY.fullmatch(key))


def parse_api_keys(text: str) -> dict[str, Caller]:
    """`API_KEYS` as key hash -> caller; raises `ApiKeysError` naming a bad entry (never its hash)."""
    callers: dict[str, Caller] = {}
    names: set[str] = set()
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise ApiKeysError(f"API_KEYS entry {number}: expected name:sha256hex or name:sha256hex:rights")
        name, digest = parts[0], parts[1].lower()
        rights = frozenset(parts[2].split("+")) if len(parts) == 3 else frozenset(RIGHTS)
        if not _NAME.fullmatch(name):
            raise ApiKeysError(f"API_KEYS entry {number}: the name {name!r} is not lower-case letters, digits, . _ -")
        if not _HEX.fullmatch(digest):
            raise ApiKeysError(f"API_KEYS entry {number} ({name}): the hash is not 64 hex digits (a SHA-256)")
        if not rights <= set(RIGHTS):
            raise ApiKeysError(f"API_KEYS entry {number} ({name}): rights are {' and '.join(RIGHTS)}, joined by +")
        if name in names or digest in callers:
            raise ApiKeysError(f"API_KEYS entry {number} ({name}): the name or the hash is listed twice")
        names.add(name)
        callers[digest] = Caller(name, rights)
    return callers


def accepted_keys(api_keys: str, required: bool) -> dict[str, Caller] | None:
    """The keys a service accepts (None: no key needed); `required` refuses an empty `API_KEYS`."""
    callers = parse_api_keys(api_keys)
    if required and not callers:
        raise ApiKeysError("REQUIRE_API_KEYS is set but API_KEYS is empty: refusing to serve predictions to anyone")
    return callers or None


@dataclass
class TokenBucket:
    """`rate` requests per second with bursts of up to one second's worth."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.capacity = max(self.rate, 1.0)
        self.tokens, self.updated = self.capacity, self.clock()

    def take(self) -> float:
        """0 when a request may pass now, else the seconds until one may."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key name; `rate` 0 lets everything through."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate, self.clock = rate, clock
        self.buckets: dict[str, TokenBucket] = {}

    def retry_after(self, name: str) -> int:
        """0 when `name` may make a request now, else the whole seconds to wait (for `Retry-After`)."""
        if not self.rate:
            return 0
        if (bucket := self.buckets.get(name)) is None:
            bucket = self.buckets[name] = TokenBucket(self.rate, self.clock)
        wait = bucket.take()
        return math.ceil(wait) if wait else 0
