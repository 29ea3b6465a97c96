"""``POST /v1/subscription_items`` and ``GET /v1/subscription_items``: an item added to
a subscription on its own, in Stripe's shapes, with Stripe's refusals; and the
``price`` filter of ``GET /v1/subscriptions`` that finds the subscriptions on a price."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import new_clock, new_customer
from tests.stripe_sandbox.test_sandbox_shapes import (
    DOCUMENTED_EXTRAS,
    extra_keys,
    fixtures,
    missing_keys,
)

__all__ = ["fixtures"]  # the fixture of Stripe's example objects, shared with the shape test


def _metered(client: stripe.StripeClient, interval: str = "month") -> stripe.Price:
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Meeting-room hours overage",
            "event_name": f"hours_{uuid.uuid4().hex[:8]}",
            "default_aggregation": {"formula": "sum"},
        }
    )
    product = client.v1.products.create(params={"name": "Meeting-room hours overage"})
    return client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 2500,
            "currency": "usd",
            "recurring": {"interval": interval, "usage_type": "metered", "meter": meter.id},  # type: ignore[typeddict-item]
        }
    )


def _subscribe(client: stripe.StripeClient, price: str) -> stripe.Subscription:
    customer, _ = new_customer(client, clock=new_clock(client))
    return client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price}]}
    )


def test_a_metered_item_added_to_a_subscription(
    client: stripe.StripeClient, catalog: dict[str, Any], fixtures: dict[str, Any]
) -> None:
    metered = _metered(client)
    sub = _subscribe(client, catalog["hot_desk"].id)

    item = client.v1.subscription_items.create(
        params={"subscription": sub.id, "price": metered.id},
        options={"idempotency_key": f"add-{sub.id}"},
    )

    shape = item.to_dict()
    assert (item.object, item.subscription, item.price.id) == (
        "subscription_item",
        sub.id,
        metered.id,
    )
    assert "quantity" not in shape  # metered: usage decides
    assert missing_keys(fixtures["subscription_item"], shape) == ["quantity"]
    assert extra_keys(fixtures["subscription_item"], shape) == set(
        DOCUMENTED_EXTRAS.get("subscription_item", set())
    )
    plan_item = sub["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (
        plan_item.current_period_start,
        plan_item.current_period_end,
    )
    after = client.v1.subscriptions.retrieve(sub.id)
    assert [i.price.id for i in after["items"].data] == [catalog["hot_desk"].id, metered.id]
    assert after["items"].total_count == 2
    # The same key again answers the same item and adds nothing.
    again = client.v1.subscription_items.create(
        params={"subscription": sub.id, "price": metered.id},
        options={"idempotency_key": f"add-{sub.id}"},
    )
    assert again.id == item.id
    listed = client.v1.subscription_items.list(params={"subscription": sub.id})
    assert [i.id for i in listed.data] == [plan_item.id, item.id]
    assert client.v1.subscription_items.retrieve(item.id).id == item.id
    # As on Stripe, the change is a customer.subscription.updated with the old items.
    [event] = [
        e
        for e in client.v1.events.list(
            params={"type": "customer.subscription.updated", "limit": 100}
        ).data
        if e.data.object["id"] == sub.id and "items" in (e.data.previous_attributes or {})
    ]
    previous = event.data.previous_attributes
    assert previous is not None
    assert [i["id"] for i in previous["items"]["data"]] == [plan_item.id]
    # A metered item on a paid subscription prorates nothing.
    pending = client.v1.invoice_items.list(params={"customer": str(sub.customer)}).data
    assert pending == []


def test_an_item_that_cannot_join_is_refused(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    metered = _metered(client)
    sub = _subscribe(client, catalog["hot_desk"].id)
    client.v1.subscription_items.create(params={"subscription": sub.id, "price": metered.id})

    with pytest.raises(stripe.InvalidRequestError) as twice:
        client.v1.subscription_items.create(params={"subscription": sub.id, "price": metered.id})
    assert f"Cannot add multiple subscription items with the same plan: {metered.id}" in str(
        twice.value
    )
    with pytest.raises(stripe.InvalidRequestError) as quantity:
        client.v1.subscription_items.create(
            params={"subscription": sub.id, "price": _metered(client).id, "quantity": 1}
        )
    assert "Quantity should not be specified where usage_type is `metered`" in str(quantity.value)
    with pytest.raises(stripe.InvalidRequestError) as yearly:
        client.v1.subscription_items.create(
            params={"subscription": sub.id, "price": _metered(client, "year").id}
        )
    assert "Found mismatch in interval field" in str(yearly.value)
    with pytest.raises(stripe.InvalidRequestError) as one_time:
        client.v1.subscription_items.create(
            params={"subscription": sub.id, "price": catalog["room"].id}
        )
    assert one_time.value.param == "price"

    client.v1.subscriptions.cancel(sub.id)
    with pytest.raises(stripe.InvalidRequestError) as ended:
        client.v1.subscription_items.create(
            params={"subscription": sub.id, "price": _metered(client).id}
        )
    assert "canceled subscription" in str(ended.value)
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.subscription_items.create(
            params={"subscription": "sub_nope", "price": metered.id}
        )
    assert unknown.value.http_status == 404


def test_subscriptions_are_listed_by_price_without_the_canceled(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    metered = _metered(client)
    office = [_subscribe(client, catalog["office"].id) for _ in range(3)]
    client.v1.subscriptions.cancel(office[0].id)
    client.v1.subscription_items.create(params={"subscription": office[1].id, "price": metered.id})

    def listed(price: str, **extra: Any) -> list[str]:
        ids: list[str] = []
        params: dict[str, Any] = {"price": price, "limit": 1, **extra}
        while True:
            page = client.v1.subscriptions.list(params=params)  # type: ignore[arg-type]
            ids += [s.id for s in page.data]
            if not page.has_more:
                return ids
            params["starting_after"] = page.data[-1].id

    on_office = listed(catalog["office"].id)
    assert office[0].id not in on_office
    assert {office[1].id, office[2].id} <= set(on_office)
    assert listed(metered.id) == [office[1].id]  # an added item's price counts too
    assert office[0].id in listed(catalog["office"].id, status="canceled")
