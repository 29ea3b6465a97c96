"""Stripe's own example objects (fixtures3.json), used as templates.

Every object the emulator returns starts as a deep copy of Stripe's fixture for
that resource, so the key set tracks Stripe's current API shapes.  The shared
reference copy beside the repository wins (``<repo>/../shared/stripe``); a
trimmed snapshot inside this package keeps the emulator working without it.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import orjson

ENV_VAR = "STRIPE_FIXTURES"
SHARED_PATH = Path(__file__).resolve().parents[1] / ".." / "shared" / "stripe" / "fixtures3.json"
SNAPSHOT_PATH = Path(__file__).resolve().parent / "fixtures_snapshot.json"

RESOURCES = (
    "customer",
    "product",
    "price",
    "payment_method",
    "subscription",
    "subscription_item",
    "invoice",
    "line_item",
    "invoiceitem",
    "invoice_payment",
    "payment_intent",
    "charge",
    "refund",
    "setup_intent",
    "coupon",
    "promotion_code",
    "discount",
    "subscription_schedule",
    "dispute",
    "checkout.session",
    "item",
    "billing_portal.session",
    "event",
    "test_helpers.test_clock",
    "deleted_customer",
    "deleted_coupon",
    "deleted_discount",
    "deleted_test_helpers.test_clock",
    "deleted_product",
    "deleted_price",
    "billing.meter",
    "billing.meter_event",
    "billing.meter_event_summary",
)


def fixtures_path() -> Path:
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured)
    return SHARED_PATH if SHARED_PATH.exists() else SNAPSHOT_PATH


@cache
def _resources() -> dict[str, Any]:
    with fixtures_path().open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)["resources"]
    return data


@cache
def _encoded(resource: str) -> bytes | None:
    found = _resources().get(resource)
    return None if found is None else orjson.dumps(found)


def template(resource: str) -> dict[str, Any]:
    """A fresh deep copy of Stripe's example object for ``resource``.

    Decoded from the example's JSON, encoded once: several templates are made
    per request (an invoice's payment makes a charge, a payment record, events).
    """
    encoded = _encoded(resource)
    if encoded is None:
        return {}
    copied: dict[str, Any] = orjson.loads(encoded)
    return copied
