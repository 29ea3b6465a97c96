"""The Stripe objects this service mirrors, for the drift report
(``shared/mirrored_kinds.py``): each kind's table, the columns it keeps and
where Stripe's object has them. Registered in ``app.py``, one line per kind."""

from __future__ import annotations

from shared.mirrored_kinds import MirroredKind, at

SUBSCRIPTION = MirroredKind(
    kind="subscription",
    id_prefix="sub",
    table="subscriptions",
    id_column="stripe_subscription_id",
    event_type="customer.subscription.updated",
    fields={
        "stripe_customer_id": at("customer", as_="id"),
        "status": at("status"),
        "price_id": at("items.data.0.price.id", as_="id"),
        # Current API versions keep the period on the items, older ones on
        # the subscription: the handler reads both, so does the comparison.
        "current_period_start": at(
            "items.data.0.current_period_start", "current_period_start", as_="timestamp"
        ),
        "current_period_end": at(
            "items.data.0.current_period_end", "current_period_end", as_="timestamp"
        ),
        "cancel_at_period_end": at("cancel_at_period_end"),
        "canceled_at": at("canceled_at", as_="timestamp"),
    },
)
