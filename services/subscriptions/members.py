"""The caller's Stripe customer, created on first need (on a test clock when set)."""

from __future__ import annotations

from typing import Any

from services.subscriptions import customers, routing
from services.subscriptions.customers import Customer
from shared.api.service import Call
from shared.http.errors import ApiError
from shared.stripe_calls import StripeCalls


def test_mode(call: Call[Any, Any]) -> bool:
    """The sandbox (no key) or an ``sk_test_`` key: never live money."""
    settings = routing.settings(call)
    key = settings.stripe_secret_key
    if key is None:
        return settings.stripe_api_base is not None
    return key.get_secret_value().startswith(("sk_test_", "rk_test_"))


async def _new_clock(stripe: StripeCalls, user_id: str, at: int) -> str:
    clock = await stripe.call(
        "create test clock",
        lambda c: c.v1.test_helpers.test_clocks.create_async(
            {"frozen_time": at, "name": f"member {user_id}"},
            {"idempotency_key": f"test-clock-{user_id}"},
        ),
    )
    return clock.id


async def customer_of(call: Call[Any, Any], user_id: str, email: str | None) -> Customer:
    pool, stripe = call.pool, routing.stripe(call)
    found = await customers.find(pool, user_id)
    if found is not None:
        return found
    clock_id = None
    if routing.settings(call).test_clocks:
        if not test_mode(call):
            raise ApiError(409, "live_mode", "test clocks exist only in test mode")
        clock_id = await _new_clock(stripe, user_id, int(routing.now(call).timestamp()))
    return await customers.ensure(pool, stripe, user_id, email, test_clock_id=clock_id)
