"""Idempotency keys as Stripe implements them.

Keys are scoped per API key and kept 24 hours.  Once the endpoint begins
executing, the status and body of the first request are saved whatever they
are, card declines and handler errors included, and a retry with the same key
gets them back with ``Idempotent-Replayed: true``.  Nothing is saved when the
request never began executing: edge failures (authentication, rate limiting,
an injected 5xx) and parameters that fail validation, so a client retry after
those executes for real.  The same key with a different request is an
``idempotency_error``; the same key while its first request is still executing
is a 409 ``idempotency_key_in_use``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import idempotency_in_use, idempotency_mismatch

TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    fingerprint: str


@dataclass
class Saved:
    request: Request
    status: int
    body: bytes
    headers: dict[str, str]
    stored_at: float


def fingerprint(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


class IdempotencyCache:
    def __init__(
        self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._saved: dict[tuple[str, str], Saved] = {}
        self._running: set[tuple[str, str]] = set()

    def clear(self) -> None:
        self._saved.clear()
        self._running.clear()

    def _expire(self) -> None:
        # Saved in the order they were stored, so the expired ones are a prefix:
        # stop at the first one still fresh instead of scanning every key on
        # every request.
        cutoff = self.clock() - self.ttl
        expired = []
        for key, saved in self._saved.items():
            if saved.stored_at >= cutoff:
                break
            expired.append(key)
        for key in expired:
            del self._saved[key]

    def begin(
        self, api_key: str, key: str, method: str, path: str, params: dict[str, Any]
    ) -> Saved | None:
        """Claim ``key`` for a request about to execute, or return its saved result.

        Raises the 409 for a key whose first request is still executing and the
        ``idempotency_error`` for a key first used with another request.
        """
        self._expire()
        scoped = (api_key, key)
        if scoped in self._running:
            raise idempotency_in_use(key)
        saved = self._saved.get(scoped)
        if saved is None:
            self._running.add(scoped)
            return None
        if saved.request != Request(method, path, fingerprint(params)):
            raise idempotency_mismatch(key)
        return saved

    def finish(
        self,
        api_key: str,
        key: str,
        *,
        method: str,
        path: str,
        params: dict[str, Any],
        status: int,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        """Save the result of a request that executed (its claim ends)."""
        self._running.discard((api_key, key))
        self._saved[(api_key, key)] = Saved(
            Request(method, path, fingerprint(params)), status, body, headers, self.clock()
        )

    def abandon(self, api_key: str, key: str) -> None:
        """Release the claim of a request that never began executing."""
        self._running.discard((api_key, key))
