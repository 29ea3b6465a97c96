"""The field mapping a service declares for the drift report reads Stripe's
objects as the handler does: both API shapes of a subscription's period, an
expanded customer as its id, times as ISO 8601 UTC; and it survives the trip
as data to the service that compares."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.subscriptions.mirrored import SUBSCRIPTION
from shared.mirrored_kinds import MirroredKind, StripeField, differences, stripe_values
from tests.support import stripe_objects as so

PERIOD = (1_790_000_000, 1_792_592_000)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


@pytest.mark.parametrize("period_on_items", [True, False])
def test_a_subscription_is_read_in_either_api_shape(period_on_items: bool) -> None:
    obj = so.subscription(
        sub_id="sub_Test1",
        customer="cus_Test1",
        status="past_due",
        price="price_private_office",
        period=PERIOD,
        period_on_items=period_on_items,
    )
    assert stripe_values(SUBSCRIPTION.fields, obj) == {
        "stripe_customer_id": "cus_Test1",
        "status": "past_due",
        "price_id": "price_private_office",
        "current_period_start": _iso(PERIOD[0]),
        "current_period_end": _iso(PERIOD[1]),
        "cancel_at_period_end": False,
        "canceled_at": None,
    }


def test_the_mapping_travels_as_data_and_reads_the_same() -> None:
    obj = so.subscription(customer="cus_Test2", cancel_at_period_end=True, canceled_at=PERIOD[0])
    obj["customer"] = {"id": "cus_Test2", "object": "customer"}  # expanded
    served = SUBSCRIPTION.spec()["fields"]
    fields = {name: StripeField.from_spec(spec) for name, spec in served.items()}
    assert stripe_values(fields, obj) == stripe_values(SUBSCRIPTION.fields, obj)
    assert stripe_values(fields, obj)["stripe_customer_id"] == "cus_Test2"


def test_differences_name_each_field_with_ours_and_stripes() -> None:
    ours = {"status": "active", "canceled_at": None, "cancel_at_period_end": False}
    stripe = {"status": "active", "canceled_at": _iso(PERIOD[0]), "cancel_at_period_end": True}
    assert differences(ours, stripe) == {
        "canceled_at": (None, _iso(PERIOD[0])),
        "cancel_at_period_end": (False, True),
    }
    assert differences(stripe, stripe) == {}


def test_names_that_would_reach_sql_are_checked() -> None:
    with pytest.raises(ValueError, match="not table or column names"):
        MirroredKind(
            kind="subscription",
            id_prefix="sub",
            table="subscriptions; DROP TABLE x",
            id_column="stripe_subscription_id",
            event_type="customer.subscription.updated",
        )
