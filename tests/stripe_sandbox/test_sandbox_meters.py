"""Usage-based billing in the sandbox: meters, meter events (one per
identifier) and their summaries per customer, in Stripe's shapes."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import stripe

from tests.stripe_sandbox.sandbox_helpers import new_customer
from tests.stripe_sandbox.test_sandbox_shapes import extra_keys, fixtures, missing_keys

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
