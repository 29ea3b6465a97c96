"""Stripe subscription events -> the local subscriptions table."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import metrics, mirror, queues
from shared.broker.handlers import Context, Handlers
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import from_unix
from shared.events import StripeEvent
from shared.logging import get_logger

log = get_logger(__name__)

handlers = Handlers()

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
# Stripe never moves a subscription out of these.
ENDED = frozenset({"canceled", "incomplete_expired"})


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

    def progress(self) -> tuple[int, ...]:
        """What only moves forward: the period end, then whether it has ended."""
        _, end = self.period()
        return (int(end.timestamp()) if end else 0, int(self.status in ENDED))


class SubscriptionEvent(StripeEvent):
    pass


def stripe_events_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.SUBSCRIPTIONS_STRIPE,
        bindings=(Binding(STRIPE_EVENTS, "customer.subscription.*"),),
        retry_delays_ms=tuple(retry_delays_ms),
    )


_UPSERT = """
INSERT INTO subscriptions AS s (
    stripe_subscription_id, stripe_customer_id, status, price_id,
    current_period_start, current_period_end, cancel_at_period_end, canceled_at,
    last_event_id, last_event_type, last_event_created,
    version_created, version_progress, version_digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13)
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
    version_created = EXCLUDED.version_created,
    version_progress = EXCLUDED.version_progress,
    version_digest = EXCLUDED.version_digest,
    updated_at = now()
"""


@handlers.on("customer.subscription.*", model=SubscriptionEvent)
async def apply_subscription_event(event: SubscriptionEvent, ctx: Context) -> None:
    snapshot = SubscriptionSnapshot.model_validate(ctx.fetched or event.data.object)
    state = snapshot.model_dump(mode="json")
    verdict = await mirror.decide(
        ctx,
        kind="subscription",
        table="subscriptions",
        id_column="stripe_subscription_id",
        stripe_id=snapshot.id,
        version=mirror.Version.of(event.created, *snapshot.progress()),
        state_digest=mirror.digest(state),
    )
    if verdict is mirror.Verdict.APPLY:
        held = await ctx.conn.fetchval(
            "SELECT status FROM subscriptions WHERE stripe_subscription_id = $1", snapshot.id
        )
        if held in ENDED and snapshot.status not in ENDED:
            verdict = mirror.Verdict.STALE  # Stripe never revives an ended subscription
    metrics.SUBSCRIPTION_EVENTS_APPLIED.labels(verdict.value).inc()
    if verdict is not mirror.Verdict.APPLY:
        log.debug("subscription_event_not_applied", subscription=snapshot.id, verdict=verdict.value)
        return
    start, end = snapshot.period()
    await ctx.conn.execute(
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
        list(snapshot.progress()),
        mirror.digest(state),
    )
