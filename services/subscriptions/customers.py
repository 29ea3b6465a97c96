"""One Stripe customer per user id, created on first need.

Subscriptions and booking payments both charge "the member's customer". The
customer is created the first time either needs it, and never twice, even
when a member's first requests arrive at once:

1. the local row answers if it exists;
2. otherwise Stripe is asked to create the customer with an idempotency key
   derived from the user id alone, so every concurrent first request sends
   the same key: Stripe executes one and answers the others with its result
   (a request that meets the first still executing gets a 409, which the call
   policy retries until the answer is there);
3. the row is inserted with ``ON CONFLICT DO NOTHING`` (on either unique
   key) and read back, so the losers of the race see the winner's row, which
   names the same customer.

Stripe keeps idempotency keys for 24 hours; the row outlives them. The user
id is also in the customer's metadata, so an operator can find a customer
from either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.stripe_calls import StripeCalls

_SELECT = "SELECT stripe_customer_id, email, test_clock_id FROM customers WHERE user_id = $1"
# No conflict target: the racing inserts carry the same user id AND the same
# customer id, and Postgres may meet either unique index first. With
# ``ON CONFLICT (user_id)`` a race that met the customer id's index first
# raised a unique violation (a 500) instead of yielding to the winner's row.
_INSERT = """
INSERT INTO customers (user_id, stripe_customer_id, email, test_clock_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class Customer:
    user_id: str
    stripe_customer_id: str
    email: str | None
    test_clock_id: str | None


def creation_key(user_id: str) -> str:
    """Stripe's idempotency key for creating this user's customer: the same for
    every request that could race to create it."""
    return f"customer-create-{user_id}"


async def find(pool: asyncpg.Pool[Any] | asyncpg.Connection[Any], user_id: str) -> Customer | None:
    row = await pool.fetchrow(_SELECT, user_id)
    if row is None:
        return None
    return Customer(user_id, row["stripe_customer_id"], row["email"], row["test_clock_id"])


async def ensure(
    pool: asyncpg.Pool[Any],
    stripe: StripeCalls,
    user_id: str,
    email: str | None,
    *,
    test_clock_id: str | None = None,
) -> Customer:
    """The user's customer, created in Stripe (once) if they have none yet.

    ``test_clock_id`` puts a new customer on a Stripe test clock (test mode
    only; the caller decides); it is ignored for a customer that exists.
    """
    existing = await find(pool, user_id)
    if existing is not None:
        return existing
    params: dict[str, Any] = {"metadata": {"user_id": user_id}}
    if email:
        params["email"] = email
    if test_clock_id:
        params["test_clock"] = test_clock_id
    created = await stripe.call(
        "create customer",
        lambda c: c.v1.customers.create_async(
            params,  # type: ignore[arg-type]
            {"idempotency_key": creation_key(user_id)},
        ),
    )
    return await record(pool, user_id, created.id, email, test_clock_id)


async def record(
    pool: asyncpg.Pool[Any],
    user_id: str,
    stripe_customer_id: str,
    email: str | None,
    test_clock_id: str | None,
) -> Customer:
    """Store the user's customer, or yield to a racing request that stored it
    first; the row that stands either way."""
    await pool.execute(_INSERT, user_id, stripe_customer_id, email, test_clock_id)
    found = await find(pool, user_id)
    if found is None:  # pragma: no cover - the row was just inserted or already there
        raise RuntimeError(f"customer row for {user_id} vanished")
    return found
