"""The subscriptions service's API (``services/subscriptions/contract.py``)."""

from __future__ import annotations

from services.subscriptions import contract
from shared.api.service import Call, Empty, ServiceRoutes
from shared.http.errors import not_found

routes = ServiceRoutes("subscriptions", contract.ENDPOINTS)


@routes.implement(contract.SHOW_SUBSCRIPTION_RECORD)
async def show_subscription(call: Call[Empty, Empty]) -> contract.SubscriptionRecord:
    row = await call.pool.fetchrow(
        "SELECT * FROM subscriptions WHERE stripe_subscription_id = $1",
        call.path["stripe_subscription_id"],
    )
    if row is None:
        raise not_found("subscription")
    return contract.SubscriptionRecord(
        id=row["stripe_subscription_id"],
        customer=row["stripe_customer_id"],
        status=row["status"],
        price_id=row["price_id"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        cancel_at_period_end=row["cancel_at_period_end"],
        canceled_at=row["canceled_at"],
        last_event=contract.LastEvent(
            id=row["last_event_id"], type=row["last_event_type"], created=row["last_event_created"]
        ),
        updated_at=row["updated_at"],
    )
