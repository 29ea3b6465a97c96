"""Every object the emulator returns has the keys of Stripe's own example objects
(fixtures3.json), nested ones included: ``parent.subscription_details``,
``items.data[].price``, ``payment_settings``, ``discounts[]``, ``payment_method_details.card``...

Compared recursively: where the fixture has a hash and so do we, every key of the
fixture's hash must be there; where the fixture has a list of hashes, every hash
in ours must have the keys of the fixture's first one.  A null where the fixture
has a hash is a nullable field, and an id where it has an object an unexpanded
one; both are fine.  Free-form maps (``metadata``) hold example keys only.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import stripe

from stripe_sandbox.fixtures import RESOURCES, SNAPSHOT_PATH
from tests.stripe_sandbox.sandbox_helpers import (
    DAY,
    HOUR,
    START,
    Sandbox,
    advance,
    new_clock,
    new_customer,
)
from tests.support.env import STRIPE_FIXTURES

# Hashes whose keys are data, not shape.
FREE_FORM = frozenset({"metadata", "payment_method_options", "fraud_details"})
# A payment method or its details carry the hash of their own type only.
TYPED = {"card", "us_bank_account"}
# Keys Stripe documents that its example objects leave out (optional, or newer than
# the examples).  Anything else we return that the examples lack is an invented
# field location, which the product would wrongly come to rely on.
DOCUMENTED_EXTRAS = {
    "customer": {"customer_account"},
    "setup_intent": {"customer_account"},
    "subscription": {
        "items.total_count",
        "billing_mode.flexible.proration_discounts",
        "billing_mode.updated_at",
    },
    "subscription_schedule": {
        "billing_mode.flexible.proration_discounts",
        "billing_mode.updated_at",
    },
    "invoice": {"lines.data[].pricing.price_details"},
    "preview": {
        "lines.data[].pricing.price_details",
        "parent.subscription_details.subscription_proration_date",
    },
    "line_item": {"pricing.price_details"},
    "invoiceitem": {"parent.subscription_details.subscription_item", "pricing.price_details"},
    "invoice_payment": {"payment.payment_intent"},
    "charge": {"outcome.risk_level", "outcome.risk_score"},
    "refund": {
        "destination_details.card.reference",
        "destination_details.card.reference_status",
        "destination_details.card.reference_type",
    },
}


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Any]:
    # Stripe's own examples, beside the repository (or STRIPE_FIXTURES): a
    # missing file fails the test rather than skipping the comparison.
    data: dict[str, Any] = json.loads(STRIPE_FIXTURES.read_text())["resources"]
    return data


def missing_keys(expected: Any, actual: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = []
        own_type = actual.get("type")
        for key, value in expected.items():
            where = f"{path}.{key}" if path else key
            if key in TYPED and own_type in TYPED and key != own_type:
                continue
            if key not in actual:
                problems.append(where)
            elif key not in FREE_FORM:
                problems.extend(missing_keys(value, actual[key], where))
        return problems
    if isinstance(expected, list) and isinstance(actual, list) and expected:
        problems = []
        for index, element in enumerate(actual):
            problems.extend(missing_keys(expected[0], element, f"{path}[{index}]"))
        return problems
    return []


def extra_keys(expected: Any, actual: Any, path: str = "") -> set[str]:
    """Keys we return that the fixture lacks, list positions written ``[]``."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        extras = set()
        for key, value in actual.items():
            where = f"{path}.{key}" if path else key
            if key not in expected:
                extras.add(where)
            elif key not in FREE_FORM:
                extras |= extra_keys(expected[key], value, where)
        return extras
    if isinstance(expected, list) and isinstance(actual, list) and expected:
        return {
            re.sub(r"\[\d+\]", "[]", e)
            for element in actual
            for e in extra_keys(expected[0], element, f"{path}[]")
        }
    return set()


def test_comparison_is_nested() -> None:
    fixture = {
        "parent": {"subscription_details": {"subscription": "sub"}},
        "items": [{"price": {"id": 1}}],
    }
    ours = {"parent": {"subscription_details": {}}, "items": [{"price": {}}, {"price": None}]}
    assert missing_keys(fixture, ours) == [
        "parent.subscription_details.subscription",
        "items[0].price.id",
    ]


def _objects(
    sandbox: Sandbox, client: stripe.StripeClient, catalog: dict[str, Any]
) -> dict[str, Any]:
    clock = new_clock(client)
    customer, pm = new_customer(client, clock=clock)
    coupon = client.v1.coupons.create(params={"percent_off": 10, "duration": "forever"})
    promotion = client.v1.promotion_codes.create(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": f"SHAPE{clock[-6:]}"}
    )
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["hot_desk"].id}],
            "discounts": [{"promotion_code": promotion.id}],
        }
    )
    client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": sub["items"].data[0].id, "price": catalog["office"].id}]}
    )
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    advance(client, clock, START + 32 * DAY + HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    invoice = client.v1.invoices.retrieve(str(sub.latest_invoice))
    preview = client.v1.invoices.create_preview(
        params={
            "subscription": sub.id,
            "subscription_details": {
                "items": [{"id": sub["items"].data[0].id, "price": catalog["hot_desk"].id}],
                "proration_behavior": "always_invoice",
            },
        }
    )
    pi = client.v1.payment_intents.create(
        params={
            "amount": 2500,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pm,  # type: ignore[typeddict-item]
            "confirm": True,
        }
    )
    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 100})
    dispute = sandbox.control("POST", f"/_sandbox/charges/{pi.latest_charge}/dispute", {})
    setup = client.v1.setup_intents.create(
        params={"customer": customer.id, "payment_method": "pm_card_visa", "confirm": True}
    )
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [{"price": catalog["room"].id}],
            "success_url": "https://example.com/ok",
            "discounts": [{"coupon": coupon.id}],
        }
    )
    line_item = client.v1.checkout.sessions.line_items.list(session.id).data[0]
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": customer.id, "return_url": "https://example.com/account"}
    )
    invoice_item = client.v1.invoice_items.list(params={"customer": customer.id}).data[0]
    payment = client.v1.invoice_payments.list(params={"invoice": invoice.id}).data[0]
    event = client.v1.events.list(params={"limit": 1}).data[0]
    discount = client.v1.subscriptions.retrieve(sub.id, params={"expand": ["discounts"]}).discounts[
        0
    ]
    objs = {
        "customer": client.v1.customers.retrieve(customer.id),
        "product": client.v1.products.retrieve(str(catalog["hot_desk"].product)),
        "price": catalog["hot_desk"],
        "payment_method": client.v1.payment_methods.retrieve(str(pm)),
        "subscription": sub,
        "subscription_item": sub["items"].data[0],
        "invoice": invoice,
        "line_item": invoice.lines.data[0],
        "invoiceitem": invoice_item,
        "invoice_payment": payment,
        "payment_intent": client.v1.payment_intents.retrieve(pi.id),
        "charge": client.v1.charges.retrieve(str(pi.latest_charge)),
        "refund": refund,
        "dispute": client.v1.disputes.retrieve(dispute["id"]),
        "setup_intent": setup,
        "coupon": client.v1.coupons.retrieve(coupon.id),
        "promotion_code": client.v1.promotion_codes.retrieve(promotion.id),
        "discount": discount,
        "subscription_schedule": client.v1.subscription_schedules.retrieve(schedule.id),
        "checkout.session": session,
        "item": line_item,
        "billing_portal.session": portal,
        "event": event,
        "test_helpers.test_clock": client.v1.test_helpers.test_clocks.retrieve(clock),
    }
    shapes = {name: obj.to_dict() for name, obj in objs.items()}
    shapes["preview"] = preview.to_dict()
    return shapes


def test_objects_have_the_fixture_keys_nested(
    sandbox: Sandbox,
    client: stripe.StripeClient,
    catalog: dict[str, Any],
    fixtures: dict[str, Any],
) -> None:
    objs = _objects(sandbox, client, catalog)
    problems = {}
    invented = {}
    for name, found in objs.items():
        kind = "invoice" if name == "preview" else name
        assert found["object"] == kind, name
        expected, obj = fixtures[kind], found
        if kind == "event":  # its data.object is any kind: compared by its own kind below
            expected = {**expected, "data": {**expected["data"], "object": {}}}
            obj = {**obj, "data": {**obj["data"], "object": {}}}
        missing = missing_keys(expected, obj)
        if missing:
            problems[name] = missing
        extras = extra_keys(expected, obj) - DOCUMENTED_EXTRAS.get(name, set())
        if extras:
            invented[name] = sorted(extras)
    assert problems == {}, json.dumps(problems, indent=1)
    assert invented == {}, json.dumps(invented, indent=1)
    # The comparison reached the nested objects the product reads.
    invoice = objs["invoice"]
    assert invoice["parent"]["subscription_details"]["subscription"] == objs["subscription"]["id"]
    assert invoice["discounts"] and invoice["total_discount_amounts"]
    assert objs["subscription"]["items"]["data"][0]["price"]["object"] == "price"
    assert objs["subscription"]["payment_settings"]["save_default_payment_method"] == "off"
    assert objs["discount"]["source"]["coupon"] == objs["coupon"]["id"]


def test_event_payloads_have_the_fixture_keys_nested(
    client: stripe.StripeClient, fixtures: dict[str, Any]
) -> None:
    problems: dict[str, list[str]] = {}
    kinds = set()
    for event in client.v1.events.list(params={"limit": 100}).auto_paging_iter():
        data = event.to_dict()
        assert set(fixtures["event"]) <= set(data)
        inner = data["data"]["object"]
        kind = inner["object"]
        if kind in fixtures:
            kinds.add(kind)
            missing = missing_keys(fixtures[kind], inner)
            if missing:
                problems.setdefault(event.type, missing)
    assert problems == {}, json.dumps(problems, indent=1)
    assert {"invoice", "subscription", "charge", "refund", "dispute", "discount"} <= kinds


def test_the_packaged_snapshot_is_stripes_fixtures(fixtures: dict[str, Any]) -> None:
    # Without the shared fixtures (a container image) the sandbox builds objects from
    # this copy; it must be Stripe's examples for every resource the sandbox makes.
    snapshot = json.loads(SNAPSHOT_PATH.read_text())["resources"]
    assert set(snapshot) == set(RESOURCES)
    assert {kind: fixtures[kind] for kind in RESOURCES} == snapshot


def test_payment_event_payloads_have_the_fixture_keys(
    sandbox: Sandbox,
    client: stripe.StripeClient,
    catalog: dict[str, Any],
    fixtures: dict[str, Any],
) -> None:
    """The events booking payments consume, each made here so none goes untested:
    payment_intent.processing, checkout.session.expired, charge.refunded and
    charge.dispute.created / closed, compared with Stripe's example objects."""
    customer, pm = new_customer(client)
    debit = client.v1.payment_intents.create(
        params={
            "amount": 12000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method_types": ["us_bank_account"],
            "payment_method": "pm_usBankAccount_success",
            "confirm": True,
        }
    )
    sandbox.control("POST", f"/_sandbox/payment_intents/{debit.id}/settle", {})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [{"price": catalog["room"].id}],
            "success_url": "https://example.com/ok",
            "metadata": {"payment_id": "pay_shape"},
        }
    )
    sandbox.control("POST", f"/_sandbox/checkout/sessions/{session.id}/expire")
    card = client.v1.payment_intents.create(
        params={
            "amount": 2500,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pm,  # type: ignore[typeddict-item]
            "confirm": True,
        }
    )
    client.v1.refunds.create(params={"payment_intent": card.id, "amount": 500})
    dispute = sandbox.control("POST", f"/_sandbox/charges/{card.latest_charge}/dispute", {})
    sandbox.control("POST", f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "lost"})

    wanted = {
        ("payment_intent.processing", debit.id),
        ("payment_intent.succeeded", debit.id),
        ("checkout.session.expired", session.id),
        ("charge.refunded", str(card.latest_charge)),
        ("charge.dispute.created", dispute["id"]),
        ("charge.dispute.closed", dispute["id"]),
    }
    seen: dict[tuple[str, str], list[str]] = {}
    for event in client.v1.events.list(params={"limit": 100}).auto_paging_iter():
        inner = event.to_dict()["data"]["object"]
        key = (event.type, inner["id"])
        if key in wanted:
            seen[key] = missing_keys(fixtures[inner["object"]], inner)
    assert set(seen) == wanted
    assert {k: v for k, v in seen.items() if v} == {}
