"""A subscription snapshot -> the subscriptions row, its history and domain events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.subscriptions import plans
from services.subscriptions.state import history, members
from services.subscriptions.state.snapshots import ENDED, SubscriptionSnapshot
from shared import billing_events as be
from shared import metrics, mirror
from shared.broker.handlers import Context
from shared.clock import from_unix
from shared.counting import count
from shared.logging import get_logger
from shared.outbox import Outbox

log = get_logger(__name__)

SOURCE = "subscriptions"

# The fields a history row compares.
TRACKED = (
    "status",
    "plan",
    "interval",
    "price_lookup_key",
    "current_period_end",
    "cancel_at_period_end",
    "cancel_at",
    "trial_end",
    "discounts",
    "schedule_id",
)

_UPSERT = """
INSERT INTO subscriptions AS s (
    stripe_subscription_id, stripe_customer_id, status, price_id,
    current_period_start, current_period_end, cancel_at_period_end, canceled_at,
    last_event_id, last_event_type, last_event_created,
    version_created, version_progress, version_digest,
    user_id, plan, interval, tier, price_lookup_key, unit_amount, currency, quantity,
    trial_start, trial_end, cancel_at, ended_at, cancellation_reason, discount,
    latest_invoice_id, schedule_id, stripe_created)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13,
        $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30)
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
    user_id = COALESCE(EXCLUDED.user_id, s.user_id),
    plan = COALESCE(EXCLUDED.plan, s.plan),
    interval = COALESCE(EXCLUDED.interval, s.interval),
    tier = EXCLUDED.tier,
    price_lookup_key = EXCLUDED.price_lookup_key,
    unit_amount = EXCLUDED.unit_amount,
    currency = EXCLUDED.currency,
    quantity = EXCLUDED.quantity,
    trial_start = EXCLUDED.trial_start,
    trial_end = EXCLUDED.trial_end,
    cancel_at = EXCLUDED.cancel_at,
    ended_at = EXCLUDED.ended_at,
    cancellation_reason = EXCLUDED.cancellation_reason,
    discount = EXCLUDED.discount,
    latest_invoice_id = EXCLUDED.latest_invoice_id,
    schedule_id = EXCLUDED.schedule_id,
    stripe_created = EXCLUDED.stripe_created,
    updated_at = now()
RETURNING *
"""


@dataclass(frozen=True)
class Applied:
    """What an applied snapshot changed: the row before and after."""

    before: asyncpg.Record | None
    after: asyncpg.Record


def _view(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    view = {field: row[field] for field in TRACKED if field != "discounts"}
    view["discounts"] = list((row["discount"] or {}).get("ids", []))
    for key, value in view.items():
        if isinstance(value, datetime):
            view[key] = value.isoformat()
    return view


async def current(ctx: Context, subscription_id: str) -> asyncpg.Record | None:
    return await ctx.conn.fetchrow(
        "SELECT * FROM subscriptions WHERE stripe_subscription_id = $1", subscription_id
    )


async def apply(
    ctx: Context,
    snapshot: SubscriptionSnapshot,
    *,
    event_id: str,
    event_type: str,
    created: int,
    grace: timedelta,
) -> Applied | None:
    """Apply ``snapshot`` if newer; returns the change, None when nothing moved."""
    state = snapshot.model_dump(mode="json")
    verdict = await mirror.decide(
        ctx,
        kind="subscription",
        table="subscriptions",
        id_column="stripe_subscription_id",
        stripe_id=snapshot.id,
        version=mirror.Version.of(created, *snapshot.progress()),
        state_digest=mirror.digest(state),
    )
    before = await current(ctx, snapshot.id)
    revived = before is not None and before["status"] in ENDED and snapshot.status not in ENDED
    if verdict is mirror.Verdict.APPLY and revived:
        verdict = mirror.Verdict.STALE  # Stripe never revives an ended subscription
    count(metrics.SUBSCRIPTION_EVENTS_APPLIED.labels(verdict.value))
    if verdict is not mirror.Verdict.APPLY:
        log.debug("subscription_event_not_applied", subscription=snapshot.id, verdict=verdict.value)
        return None
    member = await members.resolve(ctx, snapshot.customer, snapshot.metadata)
    price = snapshot.price()
    priced = plans.of_lookup_key(price.lookup_key if price else None)
    start, end = snapshot.period()
    discount = {"ids": snapshot.discounts} if snapshot.discounts else None
    after = await ctx.conn.fetchrow(
        _UPSERT,
        snapshot.id,
        snapshot.customer,
        snapshot.status,
        snapshot.price_id(),
        start,
        end,
        snapshot.cancel_at_period_end,
        from_unix(snapshot.canceled_at) if snapshot.canceled_at is not None else None,
        event_id,
        event_type,
        from_unix(created),
        list(snapshot.progress()),
        mirror.digest(state),
        member.user_id if member else None,
        priced.key if priced else None,
        priced.interval
        if priced
        else (price.recurring.interval if price and price.recurring else None),
        priced.tier if priced else None,
        price.lookup_key if price else None,
        price.unit_amount if price else None,
        price.currency if price else None,
        snapshot.quantity(),
        from_unix(snapshot.trial_start) if snapshot.trial_start else None,
        from_unix(snapshot.trial_end) if snapshot.trial_end else None,
        from_unix(snapshot.cancel_at) if snapshot.cancel_at else None,
        from_unix(snapshot.ended_at) if snapshot.ended_at else None,
        snapshot.cancellation_details.reason if snapshot.cancellation_details else None,
        discount,
        snapshot.latest_invoice,
        snapshot.schedule,
        from_unix(snapshot.created) if snapshot.created else None,
    )
    assert after is not None
    changes = history.diff(_view(before), _view(after) or {})
    if changes:
        await history.record(
            ctx.conn,
            snapshot.id,
            actor_type="stripe",
            actor=event_id,
            action=event_type,
            changes=changes,
        )
    if member is not None:
        after = await _announce(ctx, before, after, member, created=created, grace=grace)
    return Applied(before, after)


def plan_of(row: asyncpg.Record) -> be.Plan | None:
    if row["plan"] is None or row["interval"] not in ("month", "year"):
        return None
    return be.Plan(plan=row["plan"], interval=row["interval"])


def _period(row: asyncpg.Record) -> be.Period | None:
    start, end = row["current_period_start"], row["current_period_end"]
    return be.Period(start=start, end=end) if start and end else None


async def member_of(ctx: Context, row: asyncpg.Record) -> be.Member | None:
    return await members.resolve(ctx, row["stripe_customer_id"], {"user_id": row["user_id"] or ""})


async def activate(
    ctx: Context, row: asyncpg.Record, member: be.Member, *, invoice_id: str | None
) -> None:
    """The member has access for the first time: announce it once."""
    plan, period = plan_of(row), _period(row)
    if row["activated_at"] is not None or plan is None or period is None:
        return
    trialing = row["status"] == "trialing"
    await ctx.outbox.emit(
        "subscription.activated",
        be.SubscriptionActivated(
            member=member,
            subscription_id=row["stripe_subscription_id"],
            plan=plan,
            status="trialing" if trialing else "active",
            period=period,
            allotments=plans.allotments(plan.plan, trial=trialing),
            invoice_id=None if trialing else invoice_id,
            trial_end=row["trial_end"],
        ),
        version=be.SCHEMA_VERSION,
        key=row["stripe_subscription_id"],
    )
    await ctx.conn.execute(
        "UPDATE subscriptions SET activated_at = $2 WHERE stripe_subscription_id = $1",
        row["stripe_subscription_id"],
        ctx.clock.now(),
    )


async def _announce(
    ctx: Context,
    before: asyncpg.Record | None,
    after: asyncpg.Record,
    member: be.Member,
    *,
    created: int,
    grace: timedelta,
) -> asyncpg.Record:
    sub_id = after["stripe_subscription_id"]
    status, was = after["status"], (before["status"] if before else None)
    at = from_unix(created)
    # Most events announce nothing: the row is read again only if written here.
    wrote = False
    if status in ("active", "trialing") and after["activated_at"] is None:
        await activate(ctx, after, member, invoice_id=after["latest_invoice_id"])
        wrote = True
    plan = plan_of(after)
    previous = plan_of(before) if before is not None else None
    if plan is not None and previous is not None and previous != plan:
        period = _period(after)
        await ctx.outbox.emit(
            "subscription.changed",
            be.SubscriptionChanged(
                member=member,
                subscription_id=sub_id,
                previous=previous,
                current=plan,
                previous_allotments=plans.allotments(previous.plan),
                current_allotments=plans.allotments(plan.plan),
                effective_at=at,
                period=period or be.Period(start=at, end=at),
                status=status,
            ),
            version=be.SCHEMA_VERSION,
            key=f"{sub_id}:{previous.plan}/{previous.interval}->{plan.plan}/{plan.interval}:{created}",
        )
        pending = after["pending_change"]
        if pending and pending.get("plan") == plan.plan:
            await ctx.conn.execute(
                "UPDATE subscriptions SET pending_change = NULL WHERE stripe_subscription_id = $1",
                sub_id,
            )
            wrote = True
    if status == "past_due" and was != "past_due":
        since = after["past_due_since"] or at
        await ctx.conn.execute(
            "UPDATE subscriptions SET past_due_since = $2 WHERE stripe_subscription_id = $1",
            sub_id,
            since,
        )
        wrote = True
        await ctx.outbox.emit(
            "subscription.past_due",
            be.SubscriptionPastDue(
                member=member,
                subscription_id=sub_id,
                invoice_id=after["latest_invoice_id"],
                grace_until=since + grace,
            ),
            version=be.SCHEMA_VERSION,
            key=f"{sub_id}:{after['latest_invoice_id']}",
        )
    elif status in ("active", "trialing") and after["past_due_since"] is not None:
        await ctx.conn.execute(
            "UPDATE subscriptions SET past_due_since = NULL WHERE stripe_subscription_id = $1",
            sub_id,
        )
        wrote = True
    if after["cancel_at_period_end"] and not (before and before["cancel_at_period_end"]):
        await cancellation_scheduled(ctx.outbox, after, member)
    if status == "canceled" and was != "canceled":
        await ctx.outbox.emit(
            "subscription.canceled",
            be.SubscriptionCanceled(
                member=member,
                subscription_id=sub_id,
                plan=plan,
                ended_at=after["ended_at"] or after["canceled_at"] or at,
                reason=after["cancellation_reason"],
            ),
            version=be.SCHEMA_VERSION,
            key=sub_id,
        )
    if not wrote:
        return after
    refreshed = await current(ctx, sub_id)
    assert refreshed is not None
    return refreshed


async def cancellation_scheduled(outbox: Outbox, row: asyncpg.Record, member: be.Member) -> None:
    """Announce that ``row`` is set to end at its period end. The API calls
    this too when it sets it (its own write of the row hides the change from
    the event that follows); the key makes the second announcement a no-op."""
    cancel_at = row["cancel_at"] or row["current_period_end"]
    plan = plan_of(row)
    if not row["cancel_at_period_end"] or cancel_at is None or plan is None:
        return
    if row["status"] in ENDED:
        return
    sub_id = row["stripe_subscription_id"]
    await outbox.emit(
        "subscription.cancellation_scheduled",
        be.SubscriptionCancellationScheduled(
            member=member, subscription_id=sub_id, plan=plan, cancel_at=cancel_at
        ),
        version=be.SCHEMA_VERSION,
        key=f"{sub_id}:{int(cancel_at.timestamp())}",
    )


async def trial_ending(ctx: Context, snapshot: SubscriptionSnapshot) -> None:
    """``customer.subscription.trial_will_end``: the fact itself, whatever the row's age."""
    row = await current(ctx, snapshot.id)
    if row is None or snapshot.trial_end is None:
        return
    plan = plan_of(row)
    if plan is None:
        return
    member = await member_of(ctx, row)
    if member is None:
        return
    await ctx.outbox.emit(
        "subscription.trial_ending",
        be.SubscriptionTrialEnding(
            member=member,
            subscription_id=snapshot.id,
            plan=plan,
            trial_end=from_unix(snapshot.trial_end),
        ),
        version=be.SCHEMA_VERSION,
        key=f"{snapshot.id}:{snapshot.trial_end}",
    )


# What the create call answered, written before Stripe's event arrives so the
# member sees the subscription at once. Its version is the floor ('epoch'):
# every event is newer and mirror.decide replaces it; a row an event already
# wrote is kept.
_PLACEHOLDER = """
INSERT INTO subscriptions (
    stripe_subscription_id, stripe_customer_id, status, price_id, user_id, plan, interval, tier,
    price_lookup_key, unit_amount, currency, trial_end, latest_invoice_id,
    version_created, version_progress, version_digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'epoch', '{}', '')
ON CONFLICT (stripe_subscription_id) DO NOTHING
"""


async def record_placeholder(conn: Any, *values: Any) -> None:
    """The subscription as the create call answered, until its first event."""
    await conn.execute(_PLACEHOLDER, *values)
