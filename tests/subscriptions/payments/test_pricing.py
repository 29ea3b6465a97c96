"""Pricing a cart from the catalog, the fee, the redirect allow-list, the derived status."""

from __future__ import annotations

from typing import Any

import pytest

from services.subscriptions.payments import states
from services.subscriptions.payments.api import allowed_redirect
from services.subscriptions.payments.contract import Item
from services.subscriptions.payments.pricing import fee_for, price
from services.subscriptions.payments.settings import PaymentsSettings
from shared import catalog
from shared.http.errors import ApiError


def settings(**values: Any) -> PaymentsSettings:
    return PaymentsSettings(service_token="t", **values)


def cart(*items: tuple[str, int, str]) -> list[Item]:
    return [Item(product=p, quantity=q, booking_ref=r) for p, q, r in items]


def test_lines_from_the_catalog_and_no_fee_by_default() -> None:
    priced = price(
        cart(("meeting_room_hour", 3, "r-1"), ("day_pass", 1, "d-1")),
        catalog.default(),
        settings(),
    )
    assert [(line.product, line.amount) for line in priced.lines] == [
        ("meeting_room_hour", 7500),
        ("day_pass", 3500),
    ]
    assert (priced.amount, priced.fee, priced.currency) == (11000, 0, "usd")
    assert priced.products == {"meeting_room_hour": 3, "day_pass": 1}


def test_a_fixed_and_proportional_fee_is_a_line_of_its_own() -> None:
    fees = settings(payments_processing_fee_minor=30, payments_processing_fee_bps=290)
    priced = price(cart(("meeting_room_hour", 1, "r-1")), catalog.default(), fees)
    # 30 + 2.9 % of 2500 = 30 + 72.5, half up -> 103
    assert priced.fee == 103 and priced.amount == 2603
    assert priced.lines[-1].booking_ref is None and priced.booking_refs == ["r-1"]
    assert fee_for(0, fees) == 0


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ((("jetpack", 1, "r-1"),), "items.0.product"),
        ((("day_pass", 1, "d-1"), ("day_pass", 21, "d-2")), "items.1.quantity"),
        ((("meeting_room_hour", 101, "r-1"),), "items.0.quantity"),  # the default limit
    ],
)
def test_refusals_name_the_item(items: tuple[tuple[str, int, str], ...], field: str) -> None:
    with pytest.raises(ApiError) as refused:
        price(cart(*items), catalog.default(), settings())
    assert refused.value.status == 422
    assert refused.value.details[0].field == field


def test_products_default_to_a_limit_of_100() -> None:
    assert catalog.default().products["meeting_room_hour"].max_quantity == 100


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://localhost:5173/paid", True),
        ("http://localhost/paid", True),
        ("http://127.0.0.1:8000/x?y=1", True),
        ("https://shop.example.com/ok", True),
        ("https://shop.example.com:8443/ok", False),
        ("https://evil.example.com/ok", False),
        ("http://shop.example.com/ok", False),
        ("javascript:alert(1)", False),
        ("//localhost/paid", False),
        ("http://localhost.evil.com/paid", False),
        ("http://localhost:99999/paid", False),
    ],
)
def test_redirect_allow_list(url: str, allowed: bool) -> None:
    origins = ["http://localhost", "http://127.0.0.1", "https://shop.example.com:443"]
    assert allowed_redirect(url, origins) is allowed


@pytest.mark.parametrize(
    ("intent", "expected"),
    [
        ({"status": "requires_payment_method"}, "pending"),
        ({"status": "requires_payment_method", "last_payment_error": {"code": "x"}}, "failed"),
        ({"status": "requires_action"}, "pending"),
        ({"status": "processing"}, "processing"),
        ({"status": "succeeded"}, "succeeded"),
        ({"status": "canceled"}, "canceled"),
    ],
)
def test_intent_status(intent: dict[str, Any], expected: str) -> None:
    assert states.intent_status(intent) == expected


def test_overall_status() -> None:
    assert states.overall("succeeded", 1000, 0, None) == "succeeded"
    assert states.overall("succeeded", 1000, 400, None) == "partially_refunded"
    assert states.overall("succeeded", 1000, 1000, None) == "refunded"
    assert states.overall("succeeded", 1000, 400, "needs_response") == "disputed"
    assert states.overall("succeeded", 1000, 400, "lost") == "disputed"
    assert states.overall("succeeded", 1000, 400, "won") == "partially_refunded"
    assert states.intent_progress("processing") > states.intent_progress("failed")
    assert not states.live("expired") and states.live("processing")
