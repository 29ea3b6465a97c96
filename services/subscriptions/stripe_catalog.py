"""Catalog prices and promotion codes as Stripe knows them."""

from __future__ import annotations

from typing import Any

from services.subscriptions.plans import PricedPlan
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


async def metered_price_ids(stripe: StripeCalls, priced: PricedPlan) -> list[str]:
    """The metered prices (overage, usage-based billing) a subscription to ``priced``
    carries beside its plan price: none for a plan that refuses spends beyond the
    balance, so its invoices stay as they were."""
    return [await price_id(stripe, key) for key in priced.metered_keys]


def is_metered(price: Any) -> bool:
    recurring = getattr(price, "recurring", None) if price is not None else None
    return bool(recurring is not None and getattr(recurring, "usage_type", None) == "metered")


def plan_item(sub: Any) -> Any:
    """The subscription's item on the plan's own (licensed) price."""
    found = [item for item in sub["items"].data if not is_metered(item.price)]
    return found[0] if found else sub["items"].data[0]


def metered_items(sub: Any) -> list[Any]:
    return [item for item in sub["items"].data if is_metered(item.price)]


def metered_changes(sub: Any, wanted: list[str]) -> list[dict[str, Any]]:
    """``items`` entries that leave the subscription with exactly the ``wanted``
    metered prices: the ones it has stay (their usage keeps counting), missing
    ones are added (no quantity: usage decides), the others deleted."""
    held = {item.price.id: item for item in metered_items(sub)}
    changes: list[dict[str, Any]] = [{"price": price} for price in wanted if price not in held]
    changes += [{"id": item.id, "deleted": True} for p, item in held.items() if p not in wanted]
    return changes


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
