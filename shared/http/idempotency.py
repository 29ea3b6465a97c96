"""``Idempotency-Key`` for state-changing internal API calls.

The first request with a key claims it (a row with its request hash) and, once
done, stores its response; a retry with the same key and the same request gets
that response again with ``Idempotent-Replayed: true``; the same key with a
different request is a 422, and a retry while the first is still running a
409. A failed attempt (an exception) releases the key so it can be retried.
Keys are scoped by caller (``X-User-Id``) and kept in the service's own schema
(table ``idempotency_keys``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from shared.http.errors import ApiError, json_response

Operation = Callable[[], Awaitable[tuple[int, Any]]]
_MAX_KEY_LENGTH = 255


async def run_idempotent(
    pool: asyncpg.Pool[Any], request: web.Request, body: bytes, operation: Operation
) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, payload = await operation()
        return json_response(payload, status=status)
    if not key or len(key) > _MAX_KEY_LENGTH:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 characters")
    scope = request.headers.get("X-User-Id", "")
    request_hash = hashlib.sha256(
        b"%s %s\n%s" % (request.method.encode(), request.path_qs.encode(), body)
    ).hexdigest()

    claimed = await pool.fetchval(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (scope, key) DO NOTHING RETURNING true",
        scope,
        key,
        request_hash,
    )
    if not claimed:
        row = await pool.fetchrow(
            "SELECT request_hash, status, response FROM idempotency_keys"
            " WHERE scope = $1 AND key = $2",
            scope,
            key,
        )
        if row is None:  # released between our insert and select: ask for a retry
            raise ApiError(409, "idempotency_conflict", "request with this key in progress")
        if row["request_hash"] != request_hash:
            raise ApiError(
                422, "idempotency_key_reused", "Idempotency-Key was used with another request"
            )
        if row["status"] is None:
            raise ApiError(409, "idempotency_conflict", "request with this key in progress")
        return json_response(
            row["response"], status=row["status"], headers={"Idempotent-Replayed": "true"}
        )

    try:
        status, payload = await operation()
    except BaseException:
        await pool.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
        raise
    await pool.execute(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
        scope,
        key,
        status,
        payload,
    )
    return json_response(payload, status=status)
