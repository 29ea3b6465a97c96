"""Usage-based billing in the sandbox: meters, meter events (one per
identifier) and their summaries per customer, in Stripe's shapes."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import DAY, HOUR, advance, new_clock, new_customer
from tests.stripe_sandbox.test_sandbox_shapes import (
    DOCUMENTED_EXTRAS,
    extra_keys,
    fixtures,
    missing_keys,
)

__all__ = ["fixtures"]  # the fixture of Stripe's example objects, shared with the shape test


def _meter(client: stripe.StripeClient) -> stripe.billing.Meter:
    return client.v1.billing.meters.create(
        params={
            "display_name": "Meeting-room hours over the allotment",
            "event_name": f"hours_{uuid.uuid4().hex[:8]}",
            "default_aggregation": {"formula": "sum"},
        }
    )


def _summary(
    client: stripe.StripeClient, meter: stripe.billing.Meter, customer: str, start: int
) -> Any:
    return client.v1.billing.meters.event_summaries.list(
        meter.id,
        params={"customer": customer, "start_time": start, "end_time": start + 86_400},
    ).data[0]


def test_meter_events_sum_per_customer_once_per_identifier(
    client: stripe.StripeClient, fixtures: dict[str, Any]
) -> None:
    meter = _meter(client)
    customer, _ = new_customer(client, card=None)
    other, _ = new_customer(client, card=None)
    start = int(time.time()) - 60
    sent = []
    for value, who, identifier in [
        (2, customer, "spend-1"),
        (3, customer, "spend-2"),
        (7, other, "x"),
    ]:
        sent.append(
            client.v1.billing.meter_events.create(
                params={
                    "event_name": meter.event_name,
                    "payload": {"stripe_customer_id": who.id, "value": str(value)},
                    "identifier": f"{identifier}-{meter.id}",
                }
            )
        )
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create(
            params={
                "event_name": meter.event_name,
                "payload": {"stripe_customer_id": customer.id, "value": "2"},
                "identifier": f"spend-1-{meter.id}",
            }
        )
    assert refused.value.code == "resource_already_exists"
    summary = _summary(client, meter, customer.id, start)
    assert summary.aggregated_value == 5
    assert _summary(client, meter, other.id, start).aggregated_value == 7
    shapes = {
        "billing.meter": client.v1.billing.meters.retrieve(meter.id).to_dict(),
        "billing.meter_event": sent[0].to_dict(),
        "billing.meter_event_summary": summary.to_dict(),
    }
    for kind, obj in shapes.items():
        assert obj["object"] == kind
        assert missing_keys(fixtures[kind], obj) == [], json.dumps(obj)
        assert extra_keys(fixtures[kind], obj) == set(), kind


def test_meter_events_are_refused_without_a_known_customer(client: stripe.StripeClient) -> None:
    meter = _meter(client)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create(
            params={
                "event_name": meter.event_name,
                "payload": {"stripe_customer_id": "cus_nobody", "value": "1"},
            }
        )
    assert refused.value.param == "payload[stripe_customer_id]"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meters.create(
            params={
                "display_name": "again",
                "event_name": meter.event_name,
                "default_aggregation": {"formula": "sum"},
            }
        )
    listed = client.v1.billing.meters.list(params={"limit": 100})
    assert meter.id in [m.id for m in listed.data]


# --- metered prices: usage on the invoice ---------------------------------------------


def _metered(client: stripe.StripeClient, meter: stripe.billing.Meter) -> stripe.Price:
    product = client.v1.products.create(params={"name": "Meeting-room hours overage"})
    return client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 2500,
            "currency": "usd",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )


def _use(
    client: stripe.StripeClient, meter: stripe.billing.Meter, customer: str, value: int, at: int
) -> None:
    client.v1.billing.meter_events.create(
        params={
            "event_name": meter.event_name,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "identifier": uuid.uuid4().hex,
            "timestamp": at,
        }
    )


def _line_of(invoice: Any, price_id: str) -> Any:
    [line] = [
        line
        for line in invoice["lines"]["data"]
        if line["pricing"]["price_details"]["price"] == price_id
    ]
    return line


def test_a_metered_price_needs_a_meter_and_its_item_takes_no_quantity(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    meter = _meter(client)
    with pytest.raises(stripe.InvalidRequestError) as unmetered:
        client.v1.prices.create(
            params={
                "product": catalog["hot_desk"].product,
                "unit_amount": 2500,
                "currency": "usd",
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert unmetered.value.param == "recurring[meter]"
    metered = _metered(client, meter)
    assert metered.recurring is not None
    assert (metered.recurring.usage_type, metered.recurring.meter) == ("metered", meter.id)
    customer, _ = new_customer(client, clock=new_clock(client))
    with pytest.raises(stripe.InvalidRequestError) as quantity:
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["hot_desk"].id}, {"price": metered.id, "quantity": 1}],
            }
        )
    assert "Quantity should not be specified where usage_type is `metered`" in str(quantity.value)
    assert quantity.value.param == "items[1][quantity]"


def test_the_renewal_bills_the_usage_of_the_period_that_ended(
    client: stripe.StripeClient, catalog: dict[str, Any], fixtures: dict[str, Any]
) -> None:
    meter = _meter(client)
    metered = _metered(client, meter)
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    other, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}, {"price": metered.id}],
        }
    )
    plan_item, usage_item = sub["items"].data
    assert plan_item.quantity == 1
    assert "quantity" not in usage_item.to_dict()  # usage decides, as on Stripe
    assert usage_item.plan.usage_type == "metered" and usage_item.plan.meter == meter.id
    assert missing_keys(fixtures["subscription_item"], usage_item.to_dict()) == ["quantity"]
    # The first invoice: the plan in advance, the metered item at zero.
    first = client.v1.invoices.retrieve(str(sub.latest_invoice))
    zero = _line_of(first, metered.id)
    assert (zero["amount"], zero["quantity"], first["total"]) == (0, 0, 19900)
    start, end = usage_item.current_period_start, usage_item.current_period_end

    _use(client, meter, customer.id, 3, start + DAY)
    _use(client, meter, customer.id, 4, end - HOUR)
    _use(client, meter, other.id, 50, start + DAY)  # someone else's
    _use(client, meter, customer.id, 9, start - DAY)  # before the period
    preview = client.v1.invoices.create_preview(params={"subscription": sub.id})
    assert _line_of(preview, metered.id)["amount"] == 7 * 2500  # so far
    _use(client, meter, customer.id, 1, end + HOUR)  # the next period's
    advance(client, clock_id, end + 2 * HOUR)

    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert renewal["billing_reason"] == "subscription_cycle"
    assert renewal["status"] == "paid"
    line = _line_of(renewal, metered.id).to_dict()
    assert (line["amount"], line["quantity"], str(line["quantity_decimal"])) == (17500, 7, "7")
    assert line["period"] == {"start": start, "end": end}  # in arrears
    assert line["parent"]["subscription_item_details"]["subscription_item"] == usage_item.id
    assert str(line["pricing"]["unit_amount_decimal"]) == "2500"
    plan_line = _line_of(renewal, catalog["hot_desk"].id)
    assert plan_line["period"]["start"] == end  # in advance
    assert (renewal["total"], renewal["amount_paid"]) == (19900 + 17500, 19900 + 17500)
    assert missing_keys(fixtures["line_item"], line) == [], json.dumps(line)
    assert extra_keys(fixtures["line_item"], line) == DOCUMENTED_EXTRAS["line_item"]

    # The next renewal bills the next period's usage alone.
    next_end = client.v1.subscriptions.retrieve(sub.id)["items"].data[1].current_period_end
    advance(client, clock_id, next_end + 2 * HOUR)
    later = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    assert _line_of(later, metered.id)["amount"] == 2500
    assert later["total"] == 19900 + 2500


def test_a_metered_item_removed_mid_period_bills_its_usage_on_the_next_invoice(
    client: stripe.StripeClient, catalog: dict[str, Any]
) -> None:
    meter = _meter(client)
    metered = _metered(client, meter)
    clock_id = new_clock(client)
    customer, _ = new_customer(client, clock=clock_id)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}, {"price": metered.id}],
        }
    )
    usage_item = sub["items"].data[1]
    start, end = usage_item.current_period_start, usage_item.current_period_end
    _use(client, meter, customer.id, 2, start + DAY)
    advance(client, clock_id, start + 2 * DAY)
    client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": usage_item.id, "deleted": True}]}
    )
    _use(client, meter, customer.id, 5, start + 3 * DAY)  # after it left: not billed
    advance(client, clock_id, end + 2 * HOUR)
    renewal = client.v1.invoices.retrieve(
        str(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    )
    line = _line_of(renewal, metered.id)
    assert (line["amount"], line["quantity"]) == (5000, 2)
    assert line["period"].to_dict() == {"start": start, "end": start + 2 * DAY}
    assert renewal["total"] == 19900 + 5000
