"""Catalog prices and promotion codes as Stripe knows them."""

from __future__ import annotations

from typing import Any

from shared.http.errors import invalid_field
from shared.stripe_calls import StripeCalls

# lookup_key -> price id: a lookup key names one price forever (make seed).
_PRICE_IDS: dict[tuple[int, str], str] = {}


async def price_id(stripe: StripeCalls, lookup_key: str) -> str:
    cache_key = (id(stripe), lookup_key)
    if cache_key in _PRICE_IDS:
        return _PRICE_IDS[cache_key]
    found = await stripe.call(
        "list prices",
        lambda c: c.v1.prices.list_async({"lookup_keys": [lookup_key], "active": True}),
    )
    if not found.data:
        # The catalog names a price `make seed` has not created yet.
        raise invalid_field("plan", f"price {lookup_key} is not in Stripe yet (run make seed)")
    _PRICE_IDS[cache_key] = found.data[0].id
    return found.data[0].id


async def promotion_code_id(stripe: StripeCalls, code: str) -> str:
    found = await stripe.call(
        "list promotion codes",
        lambda c: c.v1.promotion_codes.list_async({"code": code, "active": True, "limit": 1}),
    )
    if not found.data:
        raise invalid_field("promotion_code", "no such active promotion code")
    return found.data[0].id


def discounts_param(promotion_code: str | None) -> list[dict[str, Any]]:
    return [{"promotion_code": promotion_code}] if promotion_code else []
