"""The audit entry of a staff write that calls Stripe, written before Stripe is.

A change in Stripe cannot share the database's transaction: were the entry
written after it, a database that fails (or a process that dies) in between
would leave the member's subscription changed, or money refunded, with no
entry. So the entry is committed first, with ``details.outcome`` ``pending``;
the write's own transaction settles it, and a refusal from Stripe settles it
as ``failed``. An audit log that cannot be written stops the request before
Stripe is called; an entry left ``pending`` is one whose request failed half
way, its change in Stripe perhaps made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import stripe

from shared import audit
from shared.api.service import Call
from shared.stripe_calls import is_transient


async def begin(
    call: Call[Any, Any],
    *,
    action: str,
    target_type: str,
    target_id: str,
    reason: str,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Commit the pending entry of this request's write; its id."""
    return await audit.begin(
        call.pool,
        caller=call.caller,
        action=action,
        target_type=target_type,
        target_id=target_id,
        reason=reason,
        request_id=call.request_id,
        details=details,
        # A request with an Idempotency-Key that failed half way and is sent
        # again finds the entry of its first run: one write, one entry.
        attempt=call.stripe_key("audit") if call.claim is not None else None,
    )


@asynccontextmanager
async def failed_if_refused(pool: asyncpg.Pool[Any], entry: int | None) -> AsyncIterator[None]:
    """Settle ``entry`` as ``failed`` when Stripe refuses the write inside. A
    transient failure (a timeout, Stripe's 5xx) may have been done: the
    entry stays ``pending``."""
    try:
        yield
    except stripe.StripeError as exc:
        if entry is not None and not is_transient(exc):
            await audit.settle(pool, entry, {"outcome": "failed"})
        raise
