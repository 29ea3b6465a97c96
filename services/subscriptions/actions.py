"""Changing, cancelling and resuming a subscription: the same for a member acting
on their own and staff acting on a member's behalf (who then give a reason)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import stripe as stripe_lib

from services.subscriptions import contract, plans, routing, staff_audit, stripe_catalog, views
from services.subscriptions.state import history
from services.subscriptions.state import subscriptions as subscription_rows
from services.subscriptions.state.snapshots import ENDED
from shared import audit, runtime
from shared import billing_events as be
from shared.api.service import Call
from shared.clock import from_unix
from shared.db import DbConnection
from shared.http.errors import ApiError, conflict, invalid_field
from shared.logging import get_logger
from shared.outbox import Outbox
from shared.stripe_calls import StripeCalls

log = get_logger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who acts: the member, or staff with a reason (audited)."""

    kind: str  # "member" | "staff"
    reason: str | None = None


async def _audit_first(call: Call[Any, Any], actor: Actor, action: str, sub_id: str) -> int | None:
    """A staff write's pending entry, committed before Stripe is called
    (``staff_audit``); a member's own write has none."""
    if actor.kind != "staff":
        return None
    return await staff_audit.begin(
        call,
        action=f"subscription.{action}",
        target_type="subscription",
        target_id=sub_id,
        reason=actor.reason or "",
    )


async def _stripe_subscription(call: Call[Any, Any], sub_id: str) -> Any:
    return await routing.stripe(call).call(
        "retrieve subscription", lambda c: c.v1.subscriptions.retrieve_async(sub_id)
    )


def _kind(row: asyncpg.Record, target: plans.PricedPlan) -> str:
    old = plans.rank(row["plan"], row["interval"])
    new = plans.rank(target.key, target.interval)
    if (row["plan"], row["interval"]) == (target.key, target.interval):
        return "same"
    return "upgrade" if new > old else "downgrade"


def _target(row: asyncpg.Record, plan: str, interval: str) -> plans.PricedPlan:
    if row["status"] in ENDED:
        raise conflict("subscription_ended", "the subscription has ended")
    return plans.chosen_or_refuse(plan, interval, row["tier"])


async def preview(
    call: Call[Any, Any], row: asyncpg.Record, plan: str, interval: str
) -> contract.ChangePreview:
    target = _target(row, plan, interval)
    kind = _kind(row, target)
    stripe = routing.stripe(call)
    period_end = row["current_period_end"] or routing.now(call)
    if kind != "upgrade":
        return contract.ChangePreview(
            kind="downgrade" if kind == "downgrade" else "same",
            amount_due_now=0,
            currency=row["currency"] or "usd",
            effective_at=period_end,
            next_amount=target.amount,
        )
    sub = await _stripe_subscription(call, row["stripe_subscription_id"])
    items = await _upgraded_items(stripe, sub, target)
    upcoming = await stripe.call(
        "preview invoice",
        lambda c: c.v1.invoices.create_preview_async(
            {
                "subscription": sub.id,
                "subscription_details": {
                    "items": items,
                    "proration_behavior": "always_invoice",
                },
            }  # type: ignore[arg-type]
        ),
    )
    return contract.ChangePreview(
        kind="upgrade",
        amount_due_now=upcoming.amount_due,
        currency=upcoming.currency,
        effective_at=routing.now(call),
        next_amount=target.amount,
    )


async def _upgraded_items(
    stripe: StripeCalls, sub: Any, target: plans.PricedPlan
) -> list[dict[str, Any]]:
    """The ``items`` of an upgrade: the plan item moves to the new price, and the
    overage (metered) items become the new plan's: kept when it bills the same
    meter, added when it starts billing one, deleted when it refuses overage."""
    item = stripe_catalog.plan_item(sub)
    price = await stripe_catalog.price_id(stripe, target.lookup_key)
    metered = await stripe_catalog.metered_price_ids(stripe, target)
    return [{"id": item.id, "price": price}, *stripe_catalog.metered_changes(sub, metered)]


async def _after(  # noqa: PLR0917 - one call shape for every action
    call: Call[Any, Any],
    row: asyncpg.Record,
    actor: Actor,
    action: str,
    changes: dict[str, tuple[Any, Any]],
    updates: dict[str, Any],
    *,
    entry: int | None,
    shown: dict[str, Any] | None = None,
) -> contract.SubscriptionView:
    """Record what was asked of Stripe (its events bring the rest), settle the
    staff's audit ``entry``, and answer, with ``shown`` (what Stripe answered)
    over the row where it is ahead of it."""
    sub_id = row["stripe_subscription_id"]

    async def effect(conn: DbConnection) -> contract.SubscriptionView:
        if updates:
            assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(updates, start=2))
            await conn.execute(
                f"UPDATE subscriptions SET {assignments}, updated_at = now()"  # noqa: S608 - fixed columns
                " WHERE stripe_subscription_id = $1",
                sub_id,
                *updates.values(),
            )
        who = call.caller.user_id
        await history.record(
            conn, sub_id, actor_type=actor.kind, actor=who, action=action, changes=changes
        )
        if entry is not None:
            settled = {k: [str(a), str(b)] for k, (a, b) in changes.items()}
            await audit.settle(conn, entry, {**settled, "outcome": "applied"})
        fresh = await conn.fetchrow(
            "SELECT * FROM subscriptions WHERE stripe_subscription_id = $1", sub_id
        )
        assert fresh is not None
        if updates.get("cancel_at_period_end") is True:
            # Stripe's event about it finds the row already set to end and
            # sees no change to announce: the fact is announced here.
            await _announce_cancellation(call, conn, fresh)
        view = (await views.subscriptions(conn, [fresh]))[0]
        return view.model_copy(update=shown) if shown else view

    return await call.commit(effect)


async def _announce_cancellation(
    call: Call[Any, Any], conn: DbConnection, row: asyncpg.Record
) -> None:
    customer = await conn.fetchrow(
        "SELECT user_id, email FROM customers WHERE stripe_customer_id = $1",
        row["stripe_customer_id"],
    )
    user_id = customer["user_id"] if customer else row["user_id"]
    if not user_id:
        return  # a customer this product did not create: nobody to tell
    member = be.Member(
        user_id=user_id,
        customer_id=row["stripe_customer_id"],
        email=customer["email"] if customer else None,
    )
    outbox = Outbox(conn, source=subscription_rows.SOURCE, clock=call.request.app[runtime.CLOCK])
    await subscription_rows.cancellation_scheduled(outbox, row, member)


def _current_phase(schedule: Any) -> Any:
    """The phase running now. Not always the first: once an earlier downgrade
    has taken effect its schedule runs its second phase until that ends, and
    the phases before the current one can no longer be changed."""
    current = schedule.current_phase
    if current is not None:
        for phase in schedule.phases:
            if phase.start_date == current.start_date:
                return phase
    return schedule.phases[0]


def _schedule_of(sub: Any) -> str | None:
    """The schedule managing ``sub`` in Stripe now, if any."""
    schedule = sub.schedule
    return schedule if isinstance(schedule, str) or schedule is None else schedule.id


async def _release_schedule(call: Call[Any, Any], schedule_id: str | None) -> None:
    if schedule_id:
        await routing.stripe(call).call(
            "release schedule",
            lambda c: c.v1.subscription_schedules.release_async(
                schedule_id, {}, {"idempotency_key": call.stripe_key(f"release-{schedule_id}")}
            ),
        )


def _discount_id(discount: Any) -> str:
    return discount if isinstance(discount, str) else str(discount.id)


async def _schedule_downgrade(
    call: Call[Any, Any],
    sub: Any,
    target: plans.PricedPlan,
    schedule: str | None,
    *,
    purpose: str = "",
) -> tuple[str, datetime]:
    """Put ``target`` on ``sub`` from the end of the current phase (a schedule's
    second phase); the schedule's id and when the change takes effect."""
    stripe = routing.stripe(call)
    sub_id = sub.id
    item = stripe_catalog.plan_item(sub)
    price = await stripe_catalog.price_id(stripe, target.lookup_key)
    if schedule is None:
        created = await stripe.call(
            "create schedule",
            lambda c: c.v1.subscription_schedules.create_async(
                {"from_subscription": sub_id},
                {"idempotency_key": call.stripe_key(f"{purpose}schedule")},
            ),
        )
        schedule, phase = created.id, created.phases[0]
    else:
        schedule_of_sub = schedule
        existing = await stripe.call(
            "retrieve schedule",
            lambda c: c.v1.subscription_schedules.retrieve_async(schedule_of_sub),
        )
        phase = _current_phase(existing)
    # Metered (overage) items: kept in the current phase, and in the next one
    # as far as the new plan bills overage too (their usage is billed either way).
    current_items = [
        {"price": item.price.id, "quantity": 1},
        *({"price": m.price.id} for m in stripe_catalog.metered_items(sub)),
    ]
    next_items = [
        {"price": price, "quantity": 1},
        *({"price": m} for m in await stripe_catalog.metered_price_ids(stripe, target)),
    ]
    # A phase without discounts inherits only the customer's: the subscription's
    # own (a promotion code redeemed on subscribing) would end with the phase.
    discounts = [{"discount": _discount_id(d)} for d in sub.discounts or []]
    schedule_id = schedule
    await stripe.call(
        "schedule downgrade",
        lambda c: c.v1.subscription_schedules.update_async(
            schedule_id,
            {
                "phases": [
                    {
                        "items": current_items,
                        "start_date": phase.start_date,
                        "end_date": phase.end_date,
                        "discounts": discounts,
                    },
                    {
                        "items": next_items,
                        "duration": {"interval": target.interval},
                        "discounts": discounts,
                    },
                ],
                "end_behavior": "release",
                "metadata": {"plan": target.key, "interval": target.interval},
            },  # type: ignore[arg-type]
            {"idempotency_key": call.stripe_key(f"{purpose}schedule-downgrade")},
        ),
    )
    return schedule_id, from_unix(phase.end_date)


async def _restore_downgrade(call: Call[Any, Any], row: asyncpg.Record) -> None:
    """Schedule the row's pending downgrade again, after an upgrade released its
    schedule and then failed (a declined card): the member keeps what they were
    shown, and the period ends on the lower plan as agreed."""
    pending = row["pending_change"]
    target = plans.chosen(pending["plan"], pending["interval"], row["tier"]) if pending else None
    if target is None:
        return
    sub_id = row["stripe_subscription_id"]
    try:
        sub = await _stripe_subscription(call, sub_id)
        await _schedule_downgrade(call, sub, target, _schedule_of(sub), purpose="restore-")
    except stripe_lib.StripeError as exc:
        # The downgrade is gone from Stripe: stop showing it.
        log.error("downgrade_not_restored", subscription=sub_id, error=repr(exc))
        await call.pool.execute(
            "UPDATE subscriptions SET pending_change = NULL, updated_at = now()"
            " WHERE stripe_subscription_id = $1",
            sub_id,
        )


async def change(
    call: Call[Any, Any], row: asyncpg.Record, plan: str, interval: str, actor: Actor
) -> contract.SubscriptionView:
    target = _target(row, plan, interval)
    kind = _kind(row, target)
    if kind == "same":
        raise invalid_field("plan", "the subscription is already on this plan and interval")
    stripe = routing.stripe(call)
    sub_id = row["stripe_subscription_id"]
    sub = await _stripe_subscription(call, sub_id)
    schedule = _schedule_of(sub)
    changes: dict[str, tuple[Any, Any]] = {
        "plan": (row["plan"], target.key),
        "interval": (row["interval"], target.interval),
    }
    if kind == "upgrade":
        entry = await _audit_first(call, actor, "upgrade", sub_id)
        async with staff_audit.failed_if_refused(call.pool, entry):
            # At once, the difference prorated and charged now.
            await _release_schedule(call, schedule)
            items = await _upgraded_items(stripe, sub, target)
            try:
                await stripe.call(
                    "upgrade subscription",
                    lambda c: c.v1.subscriptions.update_async(
                        sub_id,
                        {
                            "items": items,
                            "proration_behavior": "always_invoice",
                            "payment_behavior": "error_if_incomplete",
                            "metadata": {"plan": target.key, "interval": target.interval},
                        },  # type: ignore[arg-type]
                        {"idempotency_key": call.stripe_key("upgrade")},
                    ),
                )
            except stripe_lib.StripeError:
                if schedule is not None:
                    await _restore_downgrade(call, row)
                raise
        return await _after(
            call, row, actor, "upgrade", changes, {"pending_change": None}, entry=entry
        )
    # A downgrade waits for the period end: a schedule's second phase.
    if sub.cancel_at_period_end:
        raise conflict("cancellation_pending", "resume the subscription before changing it")
    entry = await _audit_first(call, actor, "downgrade_scheduled", sub_id)
    async with staff_audit.failed_if_refused(call.pool, entry):
        schedule_id, effective = await _schedule_downgrade(call, sub, target, schedule)
    pending = {
        "plan": target.key,
        "interval": target.interval,
        "effective_at": effective.isoformat(),
    }
    changes = {"pending_change": (None, pending)}
    return await _after(
        call,
        row,
        actor,
        "downgrade_scheduled",
        changes,
        {"pending_change": pending, "schedule_id": schedule_id},
        entry=entry,
    )


async def cancel(
    call: Call[Any, Any], row: asyncpg.Record, at_period_end: bool, actor: Actor
) -> contract.SubscriptionView:
    if row["status"] in ENDED:
        raise conflict("subscription_ended", "the subscription has already ended")
    stripe = routing.stripe(call)
    sub_id = row["stripe_subscription_id"]
    # A pending downgrade goes with the cancellation. Its schedule is the one
    # Stripe names now: the row's may be one an upgrade already released, its
    # event not here yet (releasing that again is refused).
    current = await _stripe_subscription(call, sub_id)
    action = "cancel_at_period_end" if at_period_end else "cancel"
    entry = await _audit_first(call, actor, action, sub_id)
    async with staff_audit.failed_if_refused(call.pool, entry):
        await _release_schedule(call, _schedule_of(current))
        if at_period_end:
            updated = await stripe.call(
                "cancel at period end",
                lambda c: c.v1.subscriptions.update_async(
                    sub_id,
                    {"cancel_at_period_end": True},
                    {"idempotency_key": call.stripe_key("cancel-at-period-end")},
                ),
            )
        else:
            ended = await stripe.call(
                "cancel now",
                lambda c: c.v1.subscriptions.cancel_async(
                    sub_id, {}, {"idempotency_key": call.stripe_key("cancel-now")}
                ),
            )
    if at_period_end:
        cancel_at: datetime | None = (
            from_unix(updated.cancel_at) if updated.cancel_at else row["current_period_end"]
        )
        return await _after(
            call,
            row,
            actor,
            action,
            {"cancel_at_period_end": (row["cancel_at_period_end"], True)},
            {
                "cancel_at_period_end": True,
                "cancel_at": cancel_at,
                "pending_change": None,
                "schedule_id": None,
            },
            entry=entry,
        )
    return await _after(
        call,
        row,
        actor,
        action,
        {"status": (row["status"], ended.status)},
        {"pending_change": None, "schedule_id": None},
        entry=entry,
        # The status is left to Stripe's event, which announces
        # subscription.canceled when it moves the row; the answer is Stripe's.
        shown={
            "status": ended.status,
            "cancel_at_period_end": False,
            "canceled_at": from_unix(ended.canceled_at) if ended.canceled_at else None,
            "ended_at": from_unix(ended.ended_at) if ended.ended_at else None,
        },
    )


async def resume(
    call: Call[Any, Any], row: asyncpg.Record, actor: Actor
) -> contract.SubscriptionView:
    stripe = routing.stripe(call)
    sub_id = row["stripe_subscription_id"]
    paused = row["status"] == "paused"
    if not paused and (row["status"] in ENDED or not row["cancel_at_period_end"]):
        raise ApiError(409, "nothing_to_resume", "the subscription is not set to end, nor paused")
    entry = await _audit_first(call, actor, "resume", sub_id)
    if paused:
        async with staff_audit.failed_if_refused(call.pool, entry):
            await stripe.call(
                "resume subscription",
                lambda c: c.v1.subscriptions.resume_async(
                    sub_id,
                    {"billing_cycle_anchor": "now"},  # type: ignore[arg-type]
                    {"idempotency_key": call.stripe_key("resume")},
                ),
            )
        return await _after(
            call, row, actor, "resume", {"status": ("paused", "active")}, {}, entry=entry
        )
    async with staff_audit.failed_if_refused(call.pool, entry):
        await stripe.call(
            "undo cancellation",
            lambda c: c.v1.subscriptions.update_async(
                sub_id,
                {"cancel_at_period_end": False},
                {"idempotency_key": call.stripe_key("undo-cancel")},
            ),
        )
    return await _after(
        call,
        row,
        actor,
        "resume",
        {"cancel_at_period_end": (True, False)},
        {"cancel_at_period_end": False, "cancel_at": None},
        entry=entry,
    )
