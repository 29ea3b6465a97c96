"""Stripe subscription events -> the local subscriptions table."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.subscriptions.ordering import LIFECYCLE_RANK, TERMINAL_STATUS
from shared import metrics, queues
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import from_unix
from shared.db import DbConnection
from shared.events import StripeEvent
from shared.logging import get_logger

log = get_logger(__name__)

SubscriptionStatus = Literal[
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
]


class _Price(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")
    price: _Price | None = None
    # Current API versions carry the billing period on each item.
    current_period_start: int | None = None
    current_period_end: int | None = None


class _Items(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[_Item] = Field(default_factory=list)


class SubscriptionSnapshot(BaseModel):
    """The fields we keep of a Stripe ``subscription`` object."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^sub_")
    customer: str
    status: SubscriptionStatus
    items: _Items = Field(default_factory=_Items)
    cancel_at_period_end: bool = False
    canceled_at: int | None = None
    # Older API versions: the period on the subscription itself.
    current_period_start: int | None = None
    current_period_end: int | None = None

    @field_validator("customer", mode="before")
    @classmethod
    def _customer_id(cls, value: Any) -> Any:
        # An expanded customer is an object; we keep its id.
        return value.get("id") if isinstance(value, dict) else value

    def period(self) -> tuple[datetime | None, datetime | None]:
        for item in self.items.data:
            if item.current_period_start is not None and item.current_period_end is not None:
                return from_unix(item.current_period_start), from_unix(item.current_period_end)
        start, end = self.current_period_start, self.current_period_end
        return (
            from_unix(start) if start is not None else None,
            from_unix(end) if end is not None else None,
        )

    def price_id(self) -> str | None:
        for item in self.items.data:
            if item.price is not None:
                return item.price.id
        return None


def stripe_events_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.SUBSCRIPTIONS_STRIPE,
        bindings=(Binding(STRIPE_EVENTS, "customer.subscription.*"),),
        retry_delays_ms=tuple(retry_delays_ms),
    )


# Applies the snapshot only when the event is newer than the row's last one
# (row-value comparison implements services/subscriptions/ordering.py), and
# never moves a canceled subscription to another status.
_UPSERT = """
INSERT INTO subscriptions AS s (
    stripe_subscription_id, stripe_customer_id, status, price_id,
    current_period_start, current_period_end, cancel_at_period_end, canceled_at,
    last_event_id, last_event_type, last_event_created, last_event_rank)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (stripe_subscription_id) DO UPDATE SET
    stripe_customer_id = EXCLUDED.stripe_customer_id,
    status = EXCLUDED.status,
    price_id = EXCLUDED.price_id,
    current_period_start = EXCLUDED.current_period_start,
    current_period_end = EXCLUDED.current_period_end,
    cancel_at_period_end = EXCLUDED.cancel_at_period_end,
    canceled_at = EXCLUDED.canceled_at,
    last_event_id = EXCLUDED.last_event_id,
    last_event_type = EXCLUDED.last_event_type,
    last_event_created = EXCLUDED.last_event_created,
    last_event_rank = EXCLUDED.last_event_rank,
    updated_at = now()
WHERE (s.last_event_created, s.last_event_rank, s.last_event_id)
      < (EXCLUDED.last_event_created, EXCLUDED.last_event_rank, EXCLUDED.last_event_id)
  AND NOT (s.status = $13 AND EXCLUDED.status <> $13)
RETURNING true
"""


async def apply_subscription_event(body: dict[str, Any], conn: DbConnection) -> None:
    event = StripeEvent.model_validate(body)
    snapshot = SubscriptionSnapshot.model_validate(event.data.object)
    start, end = snapshot.period()
    applied = await conn.fetchval(
        _UPSERT,
        snapshot.id,
        snapshot.customer,
        snapshot.status,
        snapshot.price_id(),
        start,
        end,
        snapshot.cancel_at_period_end,
        from_unix(snapshot.canceled_at) if snapshot.canceled_at is not None else None,
        event.id,
        event.type,
        from_unix(event.created),
        LIFECYCLE_RANK.get(event.type, 1),
        TERMINAL_STATUS,
    )
    outcome = "applied" if applied else "stale"
    metrics.SUBSCRIPTION_EVENTS_APPLIED.labels(outcome).inc()
    if not applied:
        log.info("stale_subscription_event", subscription=snapshot.id)
