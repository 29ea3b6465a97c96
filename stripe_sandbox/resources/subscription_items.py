"""Subscription items on their own: add one to a subscription, list a subscription's.

``POST /v1/subscription_items`` is what ``POST /v1/subscriptions/{id}`` does with
one more ``items[]`` entry (prorated alike, the same ``customer.subscription.updated``
event), with Stripe's refusals for an item that cannot join: a price the
subscription already has, another currency or billing interval, a subscription
that ended or is still ``incomplete``.
"""

from __future__ import annotations

from .. import lifecycle, prorations
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid, missing, required
from ..items import interval_of
from ..sandbox import Sandbox
from ..store import Obj, snapshot
from .subscriptions import _recurring_price

CREATE_FIELDS = {
    "subscription",
    "price",
    "quantity",
    "metadata",
    "proration_behavior",
    "proration_date",
    "payment_behavior",
    "tax_rates",
    "discounts",
    "billing_thresholds",
}


def _joinable(sub: Obj, price: Obj) -> None:
    """Stripe's refusals for a price that cannot join the subscription's items."""
    items = sub["items"]["data"]
    if any(item["price"]["id"] == price["id"] for item in items):
        raise invalid(
            f"Cannot add multiple subscription items with the same plan: {price['id']}",
            param="price",
        )
    for field, ours, theirs in [
        ("currency", price["currency"], {item["price"]["currency"] for item in items}),
        ("interval", interval_of(price), {interval_of(item["price"]) for item in items}),
    ]:
        if theirs and theirs != {ours}:
            raise invalid(
                "Currency and interval fields must match across all plans on this "
                f"subscription. Found mismatch in {field} field.",
                param="price",
            )


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(CREATE_FIELDS)
    sub = sb.store.get("subscription", p.req_str("subscription"), "subscription")
    if sub["status"] in lifecycle.ENDED_STATUSES:
        raise invalid(
            "A canceled subscription can only update its cancellation_details and metadata."
        )
    if sub["status"] == "incomplete":
        # Stripe: an incomplete subscription can only have metadata and its default
        # payment method updated until its first invoice is paid.
        raise invalid(
            "This subscription is `incomplete`: only its metadata and default payment "
            "method can be updated until its first invoice is paid.",
            param="subscription",
        )
    if not p.has("price"):
        raise required("price")
    price = _recurring_price(sb, p.str("price"), "price")
    _joinable(sub, price)
    behavior = p.str("proration_behavior") or "create_prorations"
    if behavior not in ("create_prorations", "always_invoice", "none"):
        raise invalid(f"Invalid proration_behavior: {behavior}", param="proration_behavior")
    customer = sb.store.get("customer", sub["customer"])
    now = sb.now(customer["test_clock"])
    before = snapshot(sub)
    change = {"price": price["id"], "quantity": p.raw("quantity"), "metadata": p.raw("metadata")}
    planned = prorations.planned_items(sb, sub, [change])
    added = planned[-1]
    known_items = set(sb.store.objects["invoiceitem"])
    invoice = prorations.change_items(
        sb,
        sub,
        planned,
        proration_behavior=behavior,
        proration_date=p.int("proration_date"),
        now=now,
    )
    prorations.settle_update(
        sb,
        sub,
        before,
        invoice,
        known_items=known_items,
        now=now,
        error_if_incomplete=p.str("payment_behavior") == "error_if_incomplete",
    )
    return added


def list_(sb: Sandbox, call: Call) -> Obj:
    """A subscription's items, in the order the subscription holds them."""
    p = call.p(LIST_PARAMS | {"subscription"})
    subscription = p.str("subscription")
    if not subscription:
        raise required("subscription")
    sub = sb.store.get("subscription", subscription, "subscription")
    return paginate(
        list(sub["items"]["data"]), call, f"/v1/subscription_items?subscription={subscription}"
    )


def retrieve(sb: Sandbox, call: Call) -> Obj:
    item_id = call.match["id"]
    for sub in sb.store.all("subscription"):
        for item in sub["items"]["data"]:
            if item["id"] == item_id:
                return item  # type: ignore[no-any-return]
    raise missing("subscription item", item_id)


ROUTES: list[Route] = [
    ("POST", "/v1/subscription_items", create),
    ("GET", "/v1/subscription_items", list_),
    ("GET", "/v1/subscription_items/{id}", retrieve),
]
