"""Stripe objects and signed webhook deliveries, built from Stripe's own fixtures.

Each object starts as a deep copy of the example in ``fixtures3.json`` so its
shape is the current API's; tests set only the values they care about.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import time
from typing import Any

import stripe

from tests.support.env import STRIPE_FIXTURES, WEBHOOK_SECRET

_ids = itertools.count(1)


@functools.cache
def _fixtures() -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(STRIPE_FIXTURES.read_text())["resources"]
    return resources


def fixture(resource: str) -> dict[str, Any]:
    return copy.deepcopy(_fixtures()[resource])


def new_id(prefix: str) -> str:
    return f"{prefix}_test{time.time_ns():x}{next(_ids)}"


def subscription(
    *,
    sub_id: str | None = None,
    customer: str = "cus_test_member",
    status: str = "active",
    price: str = "price_hot_desk",
    period: tuple[int, int] = (1_790_000_000, 1_792_592_000),
    cancel_at_period_end: bool = False,
    canceled_at: int | None = None,
    period_on_items: bool = True,
    user_id: str = "user_test_member",
) -> dict[str, Any]:
    obj = fixture("subscription")
    obj.update(
        id=sub_id or new_id("sub"),
        customer=customer,
        status=status,
        cancel_at_period_end=cancel_at_period_end,
        canceled_at=canceled_at,
        # The product puts the member's user id on every subscription it creates.
        metadata={"user_id": user_id},
    )
    item = obj["items"]["data"][0]
    item["price"]["id"] = price
    if period_on_items:
        item["current_period_start"], item["current_period_end"] = period
    else:
        # The shape of older API versions: the period on the subscription.
        item.pop("current_period_start", None)
        item.pop("current_period_end", None)
        obj["current_period_start"], obj["current_period_end"] = period
    return obj


def event(
    event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None
) -> dict[str, Any]:
    evt = fixture("event")
    evt.update(
        id=event_id or new_id("evt"),
        type=event_type,
        created=created if created is not None else int(time.time()),
        api_version=stripe.api_version,
        data={"object": obj},
    )
    return evt


def body_of(evt: dict[str, Any]) -> bytes:
    return json.dumps(evt).encode()


def signature(body: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8", errors="surrogateescape"), secret, timestamp=timestamp
    )
