"""``Idempotency-Key``: a retried request gets the first answer, never a second effect.

A state-changing call that carries a key goes through three steps:

1. **Claim** (its own short transaction; a new key, one statement): the key
   is recorded with the request's fingerprint and a *lease*. A key already
   completed answers its stored response (``Idempotent-Replayed: true``); the
   same key with another request is a 422; a key whose lease is live belongs
   to a request still running: 409. A key whose lease ran out belongs to a
   request that died (process killed, connection lost) before finishing: this
   request takes it over and runs the operation again.
2. **Effect**: the operation runs. Calls to Stripe pass an idempotency key
   *derived* from this one (:meth:`Claim.derived_key`), so a re-run after a
   crash or a timeout gets Stripe's first answer instead of a second object.
3. **Complete**, in the same transaction as the effect: the stored response
   is written only if this request still holds the lease. A request that lost
   its lease to a takeover rolls its effect back, so two runs can never both
   commit. A crash between effect and response is impossible because they are
   one commit; a crash before it leaves a lease that expires.

Business refusals (4xx raised by the operation) are stored like successes, as
Stripe does, so a retry sees the same refusal; unexpected failures release
the lease so the client may retry at once (the same request: the key stays
bound to it until it expires). Keys expire after
``idempotency_key_ttl_seconds`` (24 h, as Stripe's) and are then forgotten.
Keys are scoped by caller: two users may use the same key.

An operation whose effect is one statement may fold step 1 into it
(``Endpoint.claims_own_key``): it receives the key as a :class:`NewKey`, and
its statement makes the effect and records the key with its answer, one
commit. A key already there is :class:`KeyExists`,
raised having written nothing: the request then goes through :func:`claim`,
which replays, refuses, waits out a lease or takes over as above.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import db
from shared.db import DbConnection
from shared.http.errors import ApiError, bad_request, conflict, unprocessable

HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
# Outcomes a retry should see again; anything else (5xx, a 409 for a lease,
# 429) releases the key.
STORED_ERROR_STATUSES = frozenset({400, 402, 404, 409, 422})


def read_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not _KEY.match(value):
        raise bad_request(
            "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII", HEADER
        )
    return value


def fingerprint(method: str, path: str, canonical_body: bytes) -> str:
    return hashlib.sha256(
        b"%s %s\n%s" % (method.encode(), path.encode(), canonical_body)
    ).hexdigest()


@dataclass(frozen=True)
class Replay:
    status: int
    response: Any


@dataclass(frozen=True)
class Claim:
    scope: str
    key: str
    token: uuid.UUID
    # When the key was first claimed; a takeover keeps it, an expiry starts anew.
    since: datetime | None = None

    def derived_key(self, namespace: str, purpose: str) -> str:
        """The idempotency key for one Stripe call made on behalf of this request.

        Deterministic, so every run of the same request (a retry, a takeover)
        sends the same key; distinct per ``purpose``, so two different calls of
        one request never collide; and distinct per lifetime of the client's
        key, so a key reused after it expired (for another request, perhaps)
        never meets the Stripe keys of its first life, which Stripe may still
        hold with other parameters.
        """
        life = self.since.isoformat() if self.since is not None else ""
        digest = hashlib.sha256(
            f"{namespace}\0{self.scope}\0{self.key}\0{life}\0{purpose}".encode()
        )
        return f"{namespace}-{digest.hexdigest()[:48]}"


@dataclass(frozen=True)
class NewKey:
    """A key not claimed yet, for an operation that records it in the
    statement of its effect - complete with the answer, or claimed with
    ``lease`` as :func:`claim` does, with ``request_hash`` either way - or
    raises :class:`KeyExists` having written nothing."""

    scope: str
    key: str
    request_hash: str
    lease: timedelta

    def claimed(self, token: uuid.UUID, since: datetime) -> Claim:
        """The claim the operation's statement made."""
        return Claim(self.scope, self.key, token, since)


class KeyExists(Exception):
    """The key of a :class:`NewKey` was already there: nothing was written."""


class LeaseLost(ApiError):
    def __init__(self) -> None:
        super().__init__(
            409, "idempotency_conflict", "another request with this Idempotency-Key took over"
        )


async def claim(
    pool: asyncpg.Pool[Any],
    *,
    scope: str,
    key: str,
    request_fingerprint: str,
    ttl: timedelta,
    lease: timedelta,
) -> Claim | Replay:
    # Nearly every key is new: one statement, committed on its own, claims it
    # (one round trip instead of four). Only a key already there - a retry, a
    # reuse, an expired key - needs the transaction below.
    fresh = await pool.fetchrow(_INSERT, scope, key, request_fingerprint, lease)
    if fresh is not None:
        return Claim(scope, key, fresh["lease_token"], fresh["created_at"])
    async with db.transaction(pool) as conn:
        # An expired key is forgotten: the request runs as if it were new.
        await conn.execute(
            "DELETE FROM idempotency_keys"
            " WHERE scope = $1 AND key = $2 AND created_at < now() - $3::interval",
            scope,
            key,
            ttl,
        )
        fresh = await conn.fetchrow(_INSERT, scope, key, request_fingerprint, lease)
        if fresh is not None:
            return Claim(scope, key, fresh["lease_token"], fresh["created_at"])
        row = await conn.fetchrow(
            "SELECT request_hash, status, response, created_at, leased_until > now() AS running"
            " FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE",
            scope,
            key,
        )
        if row is None:  # purged a moment ago, as it expired
            raise _in_progress()
        if row["request_hash"] != request_fingerprint:
            raise unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
                **{HEADER: "already used for another request"},
            )
        if row["status"] is not None:
            return Replay(row["status"], row["response"])
        if row["running"]:
            raise _in_progress()
        # The holder died without finishing: take the key over.
        token = await conn.fetchval(
            "UPDATE idempotency_keys"
            " SET lease_token = gen_random_uuid(), leased_until = now() + $3::interval"
            " WHERE scope = $1 AND key = $2 RETURNING lease_token",
            scope,
            key,
            lease,
        )
        return Claim(scope, key, token, row["created_at"])


_INSERT = (
    "INSERT INTO idempotency_keys (scope, key, request_hash, lease_token, leased_until)"
    " VALUES ($1, $2, $3, gen_random_uuid(), now() + $4::interval)"
    " ON CONFLICT (scope, key) DO NOTHING RETURNING lease_token, created_at"
)


def _in_progress() -> ApiError:
    return conflict(
        "idempotency_in_progress",
        "a request with this Idempotency-Key is still running; retry shortly",
        **{HEADER: "in progress"},
    )


async def complete(conn: DbConnection, held: Claim, status: int, response: Any) -> None:
    """Store the answer; call inside the effect's transaction. Raises :class:`LeaseLost`
    (rolling the effect back) if a takeover happened meanwhile."""
    result = await conn.execute(
        "UPDATE idempotency_keys SET status = $4, response = $5, completed_at = now(),"
        " lease_token = NULL, leased_until = NULL"
        " WHERE scope = $1 AND key = $2 AND lease_token = $3",
        held.scope,
        held.key,
        held.token,
        status,
        response,
    )
    if result != "UPDATE 1":
        raise LeaseLost()


async def release(pool: asyncpg.Pool[Any], held: Claim) -> None:
    """Give the lease up after an unexpected failure: the client may retry at once.

    The key itself stays (its request and its lifetime): the retry takes it
    over like a dead holder's, so it derives the same Stripe keys, and a call
    that timed out but did happen at Stripe is answered by Stripe's first
    result instead of making a second object.
    """
    await pool.execute(
        "UPDATE idempotency_keys SET lease_token = NULL, leased_until = NULL"
        " WHERE scope = $1 AND key = $2 AND lease_token = $3",
        held.scope,
        held.key,
        held.token,
    )


async def purge_expired(pool: asyncpg.Pool[Any], ttl: timedelta) -> int:
    result = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", ttl
    )
    return int(result.split()[-1])
