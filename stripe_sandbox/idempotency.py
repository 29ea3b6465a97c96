"""Idempotency keys as Stripe implements them.

Results are stored per (API key, Idempotency-Key) for 24 hours, together with
the method, path and parameters of the first request.  A replay returns the
saved status and body with ``Idempotent-Replayed: true``; the same key with a
different request is an ``idempotency_error``.  Like Stripe, only requests that
actually executed are saved (2xx and card errors), not validation failures or
injected 429/5xx, so a client retry after a transient error executes for real.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .errors import idempotency_mismatch

TTL_SECONDS = 24 * 3600


@dataclass
class Saved:
    method: str
    path: str
    fingerprint: str
    status: int
    body: bytes
    stored_at: float


def fingerprint(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


class IdempotencyCache:
    def __init__(self) -> None:
        self._saved: dict[tuple[str, str], Saved] = {}

    def clear(self) -> None:
        self._saved.clear()

    def _expire(self) -> None:
        cutoff = time.monotonic() - TTL_SECONDS
        for key in [k for k, v in self._saved.items() if v.stored_at < cutoff]:
            del self._saved[key]

    def lookup(
        self, api_key: str, key: str, method: str, path: str, params: dict[str, Any]
    ) -> Saved | None:
        self._expire()
        saved = self._saved.get((api_key, key))
        if saved is None:
            return None
        if (saved.method, saved.path, saved.fingerprint) != (method, path, fingerprint(params)):
            raise idempotency_mismatch(key)
        return saved

    def save(
        self,
        api_key: str,
        key: str,
        *,
        method: str,
        path: str,
        params: dict[str, Any],
        status: int,
        body: bytes,
    ) -> None:
        self._saved[(api_key, key)] = Saved(
            method, path, fingerprint(params), status, body, time.monotonic()
        )
