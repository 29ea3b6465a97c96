"""Domain events on ``billing.events`` -> grants, claw-backs and what they give back.

Consumed strictly by the contract in ``shared/billing_events.py``. Each event
is applied once (the consumer's inbox); beyond that, every grant has a stable
key, so the same fact reaching us twice under two event ids (an activation and
a renewal for one period, a replay) still grants once.

Period grants are *top-ups to a level*: for one subscription, period and
credit type, the credits granted are the highest allotment any event said for
that period. So an activation (10) and a mid-period upgrade (25) grant 10 then
15, in whichever order they arrive, and a replay of either grants nothing. A
downgrade takes effect at the period end (``effective_at``): the next renewal
carries the lower allotment, nothing happens now.

A trial period is topped up to the trial credits of its plans instead
(``catalog.toml``: ``trial_credits``). The activation says a period is a
trial, and so does a change made during it (its ``status``); a change without
it, applied before the trial's activation, is taken for a paid period's. When
the activation then arrives, what that change granted beyond the trial's level
is taken back (:func:`_trial_learned`): in whichever order the events arrive,
the trial holds its trial credits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.credits import ledger
from services.credits import metrics as m
from shared import catalog as catalog_module
from shared import queues
from shared.billing_events import (
    DISPUTE_WON,
    DomainEvent,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionChanged,
    SubscriptionRenewed,
)
from shared.broker.handlers import Context, Handlers
from shared.broker.topology import BILLING_EVENTS, Binding, ConsumerQueue
from shared.catalog import Catalog
from shared.counting import count
from shared.db import DbConnection
from shared.logging import get_logger

log = get_logger(__name__)

EVENT_TYPES = (
    "subscription.activated",
    "subscription.renewed",
    "subscription.changed",
    "subscription.canceled",
    "payment.succeeded",
    "payment.refunded",
    "payment.refund_failed",
    "payment.disputed",
    "payment.dispute_closed",
)


def billing_events_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.CREDITS_BILLING,
        bindings=tuple(Binding(BILLING_EVENTS, t) for t in EVENT_TYPES),
        retry_delays_ms=tuple(retry_delays_ms),
    )


def build_handlers(catalog: Catalog | None = None) -> Handlers:
    """The handlers, reading credit packs, trial credits and priorities from
    ``catalog`` (the repository's by default)."""
    handlers = Handlers()

    def the_catalog() -> Catalog:
        return catalog or catalog_module.default()

    @handlers.on("subscription.activated", model=DomainEvent[SubscriptionActivated])
    async def activated(event: DomainEvent[SubscriptionActivated], ctx: Context) -> None:
        data = event.data
        trial = data.status == "trialing"
        allotments = dict(data.allotments)
        plan = the_catalog().plans.get(data.plan.plan)
        if trial and plan is not None:
            # The catalog says what a trial grants (default: the full allotment).
            allotments = plan.allotments(trial=True)
        await _period_grants(
            ctx,
            user_id=data.member.user_id,
            customer_id=data.member.customer_id,
            subscription_id=data.subscription_id,
            plan=data.plan.plan,
            start=data.period.start,
            end=data.period.end,
            allotments=allotments,
            source="trial" if trial else "plan",
            invoice_id=data.invoice_id,
            catalog=the_catalog(),
            trial=trial,
        )

    @handlers.on("subscription.renewed", model=DomainEvent[SubscriptionRenewed])
    async def renewed(event: DomainEvent[SubscriptionRenewed], ctx: Context) -> None:
        data = event.data
        await _period_grants(
            ctx,
            user_id=data.member.user_id,
            customer_id=data.member.customer_id,
            subscription_id=data.subscription_id,
            plan=data.plan.plan,
            start=data.period.start,
            end=data.period.end,
            allotments=data.allotments,
            source="plan",
            invoice_id=data.invoice_id,
            catalog=the_catalog(),
        )

    @handlers.on("subscription.changed", model=DomainEvent[SubscriptionChanged])
    async def changed(event: DomainEvent[SubscriptionChanged], ctx: Context) -> None:
        data = event.data
        if data.effective_at >= data.period.end:
            # A downgrade (or any change) from the next period: that period's
            # renewal carries the new allotments.
            log.info("credits_change_deferred", subscription_id=data.subscription_id)
            return
        # The event carries the new plan's paid allotments: a change while
        # trialing (an upgrade, or monthly to yearly) keeps the period a trial,
        # topped up to the new plan's trial credits only. The event says so
        # (status), or the trial's activation was seen; an event without status
        # applied before the activation is corrected by it (_trial_learned).
        plan = the_catalog().plans.get(data.current.plan)
        await _period_grants(
            ctx,
            user_id=data.member.user_id,
            customer_id=data.member.customer_id,
            subscription_id=data.subscription_id,
            plan=data.current.plan,
            start=data.period.start,
            end=data.period.end,
            allotments=data.current_allotments,
            source="upgrade",
            invoice_id=None,
            catalog=the_catalog(),
            trial=data.status == "trialing",
            trial_allotments=plan.allotments(trial=True) if plan is not None else None,
            changes_plan=True,
        )

    @handlers.on("subscription.canceled", model=DomainEvent[SubscriptionCanceled])
    async def canceled(event: DomainEvent[SubscriptionCanceled], ctx: Context) -> None:
        data = event.data
        # What was granted stays until it expires; no period starting at or
        # after the end is granted (a late renewal included), nothing rolls over.
        ended_at: datetime = await ctx.conn.fetchval(
            """
            INSERT INTO subscriptions (subscription_id, user_id, ended_at, updated_at)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (subscription_id) DO UPDATE
            SET ended_at = LEAST(COALESCE(subscriptions.ended_at, EXCLUDED.ended_at),
                                 EXCLUDED.ended_at),
                updated_at = EXCLUDED.updated_at
            RETURNING ended_at
            """,
            data.subscription_id,
            data.member.user_id,
            data.ended_at,
            ctx.clock.now(),
        )
        # The sweep may have rolled credits over past the end before it knew.
        m.count(
            m.EXPIRED,
            await ledger.end_rollovers(
                ctx.conn, data.member.user_id, data.subscription_id, ended_at, now=ctx.clock.now()
            ),
        )

    @handlers.on("payment.succeeded", model=DomainEvent[PaymentSucceeded])
    async def succeeded(event: DomainEvent[PaymentSucceeded], ctx: Context) -> None:
        data = event.data
        ref = data.payment.payment_id or data.payment.payment_intent_id or event.id
        now = ctx.clock.now()
        granted: dict[str, int] = {}
        for product_key, quantity in sorted(data.products.items()):
            product = the_catalog().products.get(product_key)
            if product is None or not product.grants or quantity <= 0:
                continue
            expires = (
                now + timedelta(days=product.grant_valid_days) if product.grant_valid_days else None
            )
            priority = (
                product.grant_priority
                if product.grant_priority is not None
                else the_catalog().admin_grant_priority
            )
            for credit_type, per_unit in sorted(product.grants.items()):
                made = await ledger.grant(
                    ctx.conn,
                    ledger.NewGrant(
                        key=f"pack:{ref}:{product_key}:{credit_type}",
                        user_id=data.member.user_id,
                        credit_type=credit_type,
                        source="pack",
                        amount=per_unit * quantity,
                        priority=priority,
                        expires_at=expires,
                        invoice_id=data.payment.invoice_id,
                        payment_intent_id=data.payment.payment_intent_id,
                    ),
                    now,
                )
                if made is not None:
                    granted[credit_type] = granted.get(credit_type, 0) + per_unit * quantity
        for credit_type, amount in granted.items():
            count(m.GRANTED.labels(credit_type, "pack"), amount)
        if granted:
            await _claw_back_late(
                ctx,
                invoice_id=data.payment.invoice_id,
                payment_intent_id=data.payment.payment_intent_id,
            )

    _claw_back_handlers(handlers)
    return handlers


def _claw_back_handlers(handlers: Handlers) -> None:
    """Refunds and disputes take credits back; a refund that fails and a
    dispute won give them back."""

    @handlers.on("payment.refunded", model=DomainEvent[PaymentRefunded])
    async def refunded(event: DomainEvent[PaymentRefunded], ctx: Context) -> None:
        data = event.data
        cause = f"refund:{data.refund_id or event.id}"
        # A partial refund takes back its share: the payment's refunds
        # standing over what was paid (_standing, ledger.clawback).
        await _claw_back(
            ctx,
            data.payment.invoice_id,
            data.payment.payment_intent_id,
            cause,
            refund=(data.amount_refunded, data.total_refunded, data.amount),
        )

    @handlers.on("payment.refund_failed", model=DomainEvent[PaymentRefundFailed])
    async def refund_failed(event: DomainEvent[PaymentRefundFailed], ctx: Context) -> None:
        data = event.data
        await _give_back(
            ctx,
            data.payment.invoice_id,
            data.payment.payment_intent_id,
            f"refund:{data.refund_id}",
            why=f"the refund {data.status}",
            refund=(data.amount_refunded, data.total_refunded, data.amount),
        )

    @handlers.on("payment.disputed", model=DomainEvent[PaymentDisputed])
    async def disputed(event: DomainEvent[PaymentDisputed], ctx: Context) -> None:
        data = event.data
        cause = f"dispute:{data.dispute_id}"
        await _claw_back(ctx, data.payment.invoice_id, data.payment.payment_intent_id, cause)

    @handlers.on("payment.dispute_closed", model=DomainEvent[PaymentDisputeClosed])
    async def dispute_closed(event: DomainEvent[PaymentDisputeClosed], ctx: Context) -> None:
        data = event.data
        if data.status not in DISPUTE_WON:
            # Lost: the cardholder has the money, what the dispute took stays taken.
            log.info("credits_dispute_lost", dispute_id=data.dispute_id, status=data.status)
            return
        await _give_back(
            ctx,
            data.payment.invoice_id,
            data.payment.payment_intent_id,
            f"dispute:{data.dispute_id}",
            why=f"the dispute {data.status}",
        )


async def _subscription_seen(
    conn: DbConnection,
    *,
    subscription_id: str,
    user_id: str,
    customer_id: str,
    plan: str,
    start: datetime,
    end: datetime,
    now: datetime,
    trial: bool = False,
    changes_plan: bool = False,
) -> asyncpg.Record:
    """Remember the newest period seen (and the trial's, for a trial); the
    subscription's ``ended_at`` if it ended, and its ``trial_period_start``.

    The plan is the newest period's. Within one period, a change's plan
    (``changes_plan``) is the newer; an activation or a renewal opens the
    period, so its plan never replaces one a change of that period recorded
    (the change's event overtook it)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        INSERT INTO subscriptions (subscription_id, user_id, plan, period_start, period_end,
                                   updated_at, customer_id, trial_period_start)
        VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN $4::timestamptz END)
        ON CONFLICT (subscription_id) DO UPDATE SET
            trial_period_start = COALESCE(subscriptions.trial_period_start,
                                          EXCLUDED.trial_period_start),
            customer_id = EXCLUDED.customer_id,
            plan = CASE WHEN subscriptions.period_start IS NULL
                          OR EXCLUDED.period_start > subscriptions.period_start
                          OR (EXCLUDED.period_start = subscriptions.period_start
                              AND ($9 OR subscriptions.plan IS NULL))
                        THEN EXCLUDED.plan ELSE subscriptions.plan END,
            period_start = GREATEST(subscriptions.period_start, EXCLUDED.period_start),
            period_end = CASE WHEN subscriptions.period_start IS NULL
                                OR EXCLUDED.period_start >= subscriptions.period_start
                              THEN EXCLUDED.period_end ELSE subscriptions.period_end END,
            updated_at = EXCLUDED.updated_at
        RETURNING ended_at, trial_period_start
        """,
        subscription_id,
        user_id,
        plan,
        start,
        end,
        now,
        customer_id,
        trial,
        changes_plan,
    )
    assert row is not None  # an upsert with RETURNING always returns its row
    return row


# The cause under which a trial period gives back what it was granted as a
# paid one (ledger.take_back, recorded in ``clawbacks``); not granted, for the
# period's level.
TRIAL_EXCESS = "trial"


async def _period_level(
    conn: DbConnection, subscription_id: str, start: datetime, credit_type: str
) -> int:
    """What the period's grants of ``credit_type`` gave, less what its trial
    took back of them: the level the period was topped up to."""
    level = await conn.fetchval(
        "SELECT COALESCE(sum(g.amount), 0) - COALESCE(sum(c.taken), 0) FROM grants g"
        " LEFT JOIN clawbacks c ON c.grant_id = g.id AND c.cause = $4"
        " WHERE g.subscription_id = $1 AND g.period_start = $2 AND g.credit_type = $3"
        " AND g.source IN ('plan', 'trial', 'upgrade')",
        subscription_id,
        start,
        credit_type,
        TRIAL_EXCESS,
    )
    return int(level)


async def _period_credit_types(
    conn: DbConnection, subscription_id: str, start: datetime
) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT credit_type FROM grants WHERE subscription_id = $1"
        " AND period_start = $2 AND source IN ('plan', 'trial', 'upgrade')",
        subscription_id,
        start,
    )
    return [str(r["credit_type"]) for r in rows]


async def _period_grants(
    ctx: Context,
    *,
    user_id: str,
    customer_id: str,
    subscription_id: str,
    plan: str,
    start: datetime,
    end: datetime,
    allotments: Mapping[str, int],
    source: str,
    invoice_id: str | None,
    catalog: Catalog,
    trial: bool = False,
    trial_allotments: Mapping[str, int] | None = None,
    changes_plan: bool = False,
) -> None:
    """Top the period up to ``allotments``; to ``trial_allotments`` instead
    (where given) when the period is the subscription's trial: ``trial`` (the
    event says so), or an earlier event said so."""
    now = ctx.clock.now()
    # The subscription as it was before this event: whether its trial was
    # known, and the plan a change recorded for this period. Its row written
    # first if new, then locked: an event of the same subscription handled at
    # the same time waits for this one and then sees what it did, so a trial
    # is learned once, by whichever comes first.
    await ctx.conn.execute(
        "INSERT INTO subscriptions (subscription_id, user_id, updated_at)"
        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        subscription_id,
        user_id,
        now,
    )
    before = await ctx.conn.fetchrow(
        "SELECT plan, period_start, trial_period_start FROM subscriptions"
        " WHERE subscription_id = $1 FOR UPDATE",
        subscription_id,
    )
    assert before is not None  # written just above if it was not there
    seen = await _subscription_seen(
        ctx.conn,
        subscription_id=subscription_id,
        user_id=user_id,
        customer_id=customer_id,
        plan=plan,
        start=start,
        end=end,
        now=now,
        trial=trial,
        changes_plan=changes_plan,
    )
    ended_at = seen["ended_at"]
    if ended_at is not None and start >= ended_at:
        log.info("credits_not_granted_after_cancel", subscription_id=subscription_id)
        return
    is_trial = trial or seen["trial_period_start"] == start
    if is_trial and trial_allotments is not None:
        allotments = trial_allotments
    # Every account this touches, locked in one order (ledger.py's rule).
    types = {t for t, level in allotments.items() if level > 0}
    types.update(await _period_credit_types(ctx.conn, subscription_id, start))
    for credit_type in sorted(types):
        await ledger.lock_account(ctx.conn, user_id, credit_type)
    if is_trial and before["trial_period_start"] != start:
        await _trial_learned(
            ctx,
            subscription_id=subscription_id,
            start=start,
            allotments=allotments,
            recorded_plan=before["plan"] if before["period_start"] == start else None,
            catalog=catalog,
        )
    for credit_type, level in sorted(allotments.items()):
        if level <= 0:
            continue
        already = await _period_level(ctx.conn, subscription_id, start, credit_type)
        top_up = level - already
        if top_up <= 0:
            if invoice_id is not None:
                # The period was granted before the invoice that paid for it
                # was known (an upgrade's event overtook the activation's):
                # name the invoice on those grants, or its refund finds none.
                await ctx.conn.execute(
                    "UPDATE grants SET invoice_id = $4 WHERE subscription_id = $1"
                    " AND period_start = $2 AND credit_type = $3"
                    " AND source IN ('plan', 'trial', 'upgrade') AND invoice_id IS NULL",
                    subscription_id,
                    start,
                    credit_type,
                    invoice_id,
                )
            continue
        made = await ledger.grant(
            ctx.conn,
            ledger.NewGrant(
                # Stable for this subscription, period, type and level. A
                # trial's levels have their own keys: a paid level granted
                # before the period was known as a trial, then taken back to
                # the trial's, may be reached again by a trial's upgrade.
                key=f"period:{subscription_id}:{start.isoformat()}:{credit_type}:"
                + ("trial:" if is_trial else "")
                + str(level),
                user_id=user_id,
                credit_type=credit_type,
                source=source,
                amount=top_up,
                priority=catalog.plan_grant_priority,
                expires_at=end,
                subscription_id=subscription_id,
                period_start=start,
                period_end=end,
                invoice_id=invoice_id,
            ),
            now,
        )
        if made is not None:
            count(m.GRANTED.labels(credit_type, source), top_up)
    if invoice_id is None:
        # An upgrade names no invoice; the period's grants name the one that
        # paid for it, whose refund takes the period's upgrades back too. One
        # already applied takes this top-up back now, as it would have had
        # the upgrade arrived first.
        invoice_id = await ctx.conn.fetchval(
            "SELECT invoice_id FROM grants WHERE subscription_id = $1 AND period_start = $2"
            " AND invoice_id IS NOT NULL AND source <> 'rollover' ORDER BY id LIMIT 1",
            subscription_id,
            start,
        )
    if invoice_id is not None:
        await _claw_back_late(ctx, invoice_id=invoice_id, payment_intent_id=None)


async def _trial_learned(
    ctx: Context,
    *,
    subscription_id: str,
    start: datetime,
    allotments: Mapping[str, int],
    recorded_plan: str | None,
    catalog: Catalog,
) -> None:
    """The period just became known as a trial: what it was granted before,
    as a paid period (a change without status overtook the activation), is
    brought down to the trial's level, the most of this event's trial credits
    (``allotments``) and those of the plan a change recorded for the period.

    What was spent of the excess stays spent (reported on the claw-back);
    the rest is taken back, newest grant first.

    The period records one plan, its last change's: several changes without
    status, all applied before the activation, come down to the trial
    credits of the one applied last. Only events published before
    ``subscription.changed`` carried ``status`` lack it."""
    levels = dict(allotments)
    if recorded_plan is not None:
        known = catalog.plans.get(recorded_plan)
        if known is None:
            # Its trial level is unknown: better keep too much than take
            # back what the trial may be due.
            log.warning(
                "credits_trial_level_unknown", subscription_id=subscription_id, plan=recorded_plan
            )
            return
        for credit_type, level in known.allotments(trial=True).items():
            levels[credit_type] = max(levels.get(credit_type, 0), level)
    for credit_type in await _period_credit_types(ctx.conn, subscription_id, start):
        excess = await _period_level(ctx.conn, subscription_id, start, credit_type) - max(
            levels.get(credit_type, 0), 0
        )
        if excess <= 0:
            continue
        ids = await ctx.conn.fetch(
            "SELECT id FROM grants WHERE subscription_id = $1 AND period_start = $2"
            " AND credit_type = $3 AND source IN ('plan', 'trial', 'upgrade') ORDER BY id DESC",
            subscription_id,
            start,
            credit_type,
        )
        done = await ledger.take_back(
            ctx.conn,
            grant_ids=[int(r["id"]) for r in ids],
            amount=excess,
            cause=TRIAL_EXCESS,
            note="taken back: the period is a trial",
            now=ctx.clock.now(),
        )
        _report_taken(
            done,
            m.TRIAL_TAKEN_BACK,
            "credits_trial_excess_taken_back",
            subscription_id=subscription_id,
        )


# The grants a payment paid for: a subscription invoice's period grants (with
# that period's upgrades), or a credit pack's by its payment intent.
_INVOICE_GRANTS = """
SELECT g.id FROM grants g WHERE g.invoice_id = $1
UNION
SELECT u.id FROM grants g JOIN grants u
  ON u.subscription_id = g.subscription_id AND u.period_start = g.period_start
 AND u.source = 'upgrade'
-- A rollover's period is the next one, paid by another invoice.
WHERE g.invoice_id = $1 AND g.source <> 'rollover'
"""

# The causes recorded for one payment: an invoice's, or else a payment intent's.
_SAME_PAYMENT = (
    "CASE WHEN $1::text IS NOT NULL THEN invoice_id = $1"
    " ELSE invoice_id IS NULL AND payment_intent_id = $2 END"
)


async def _grants_of(
    ctx: Context, invoice_id: str | None, payment_intent_id: str | None
) -> list[int]:
    if invoice_id is not None:
        rows = await ctx.conn.fetch(_INVOICE_GRANTS, invoice_id)
    elif payment_intent_id is not None:
        rows = await ctx.conn.fetch(
            "SELECT id FROM grants WHERE payment_intent_id = $1", payment_intent_id
        )
    else:
        return []
    return sorted(int(r["id"]) for r in rows)


@dataclass(frozen=True)
class _Standing:
    """What the payment's causes still standing take of each grant."""

    # All of it: a dispute not won, or refunds adding up to what was paid.
    whole: bool
    # Else up to (refunded, paid) of it: the partial refunds standing.
    share: tuple[int, int] | None


async def _standing(
    ctx: Context, invoice_id: str | None, payment_intent_id: str | None
) -> _Standing:
    """The payment's causes not withdrawn. A partial refund's share is the sum
    of the standing refunds' own amounts over what was paid: a refund that
    failed counts for nothing, whatever order the events came in (the
    ``total_refunded`` an event carries may count it). Writes that sum to
    the standing refunds' ``refunded``, where a spend's reversal reads it."""
    rows = await ctx.conn.fetch(
        "SELECT cause, amount, paid FROM clawback_causes"  # noqa: S608 - a constant
        f" WHERE withdrawn_at IS NULL AND {_SAME_PAYMENT}",
        invoice_id,
        payment_intent_id,
    )
    refunds = [r for r in rows if r["cause"].startswith("refund:")]
    disputed = len(refunds) < len(rows)
    if any(r["paid"] is None for r in refunds):
        # A full refund recorded before refunds' amounts were kept.
        return _Standing(whole=True, share=None)
    if not refunds:
        return _Standing(whole=disputed, share=None)
    refunded = sum(int(r["amount"] or 0) for r in refunds)
    paid = max(int(r["paid"]) for r in refunds)
    await ctx.conn.execute(
        "UPDATE clawback_causes SET refunded = $3"  # noqa: S608 - a constant
        f" WHERE withdrawn_at IS NULL AND cause LIKE 'refund:%' AND {_SAME_PAYMENT}",
        invoice_id,
        payment_intent_id,
        refunded,
    )
    if disputed or paid <= 0 or refunded >= paid:
        return _Standing(whole=True, share=None)
    return _Standing(whole=False, share=(refunded, paid))


async def _claw_back(
    ctx: Context,
    invoice_id: str | None,
    payment_intent_id: str | None,
    cause: str,
    *,
    refund: tuple[int, int, int] | None = None,
) -> None:
    """A refunded or disputed payment takes back the unspent credits it paid
    for (:func:`_grants_of`); a partial refund only its share.

    ``refund``: (this refund, all the payment's refunds, paid) as the event
    says, for a refund's cause; None for a dispute, or to apply a cause
    already recorded."""
    amount, total, paid = refund if refund is not None else (None, None, None)
    # Kept, so that a grant for this payment applied later (its event was
    # overtaken) is taken back as it is made: :func:`_claw_back_late`.
    await ctx.conn.execute(
        "INSERT INTO clawback_causes"
        " (cause, invoice_id, payment_intent_id, at, amount, refunded, paid)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        cause,
        invoice_id,
        payment_intent_id,
        ctx.clock.now(),
        amount,
        total,
        paid,
    )
    withdrawn = await ctx.conn.fetchval(
        "SELECT withdrawn_at FROM clawback_causes WHERE cause = $1", cause
    )
    if withdrawn is not None:
        # The dispute was won or the refund failed before this arrived.
        log.info("credits_clawback_withdrawn_before", cause=cause)
        return
    ids = await _grants_of(ctx, invoice_id, payment_intent_id)
    standing = await _standing(ctx, invoice_id, payment_intent_id)
    share = standing.share if cause.startswith("refund:") and not standing.whole else None
    if not ids:
        return
    done = await ledger.clawback(
        ctx.conn,
        grant_ids=ids,
        cause=cause,
        note=f"taken back: {cause}",
        now=ctx.clock.now(),
        share=share,
    )
    _report_taken(done, m.CLAWED_BACK, "credits_clawed_back", cause=cause)


async def _give_back(
    ctx: Context,
    invoice_id: str | None,
    payment_intent_id: str | None,
    cause: str,
    *,
    why: str,
    refund: tuple[int, int, int] | None = None,
) -> None:
    """The cause of a claw-back went away (a dispute won, a refund failed):
    give back what it took, to the grants it came from (ledger.give_back).

    The cause is marked withdrawn once: a repeat gives nothing more, and a
    claw-back for it arriving afterwards (the events crossed) takes nothing.
    """
    amount, total, paid = refund if refund is not None else (None, None, None)
    now = ctx.clock.now()
    withdrawn = await ctx.conn.fetchval(
        "INSERT INTO clawback_causes"
        " (cause, invoice_id, payment_intent_id, at, amount, refunded, paid, withdrawn_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $4)"
        " ON CONFLICT (cause) DO UPDATE SET withdrawn_at = EXCLUDED.withdrawn_at"
        " WHERE clawback_causes.withdrawn_at IS NULL RETURNING true",
        cause,
        invoice_id,
        payment_intent_id,
        now,
        amount,
        total,
        paid,
    )
    if not withdrawn:
        return
    ids = await _grants_of(ctx, invoice_id, payment_intent_id)
    standing = await _standing(ctx, invoice_id, payment_intent_id)
    done = await ledger.give_back(
        ctx.conn,
        grant_ids=ids,
        cause=cause,
        note=f"given back: {cause} ({why})",
        now=now,
        keep_all=standing.whole,
        share=standing.share,
    )
    for item in done:
        if item.given_back:
            count(m.RESTORED.labels(item.credit_type), item.given_back)
        log.info(
            "credits_given_back",
            cause=cause,
            grant_id=item.grant_id,
            credit_type=item.credit_type,
            given_back=item.given_back,
            forfeited=item.forfeited,
        )


async def _claw_back_late(
    ctx: Context, *, invoice_id: str | None, payment_intent_id: str | None
) -> None:
    """Apply the refunds and disputes already seen for the payment a grant
    just made came from: their events arrived before the grant's."""
    causes = await ctx.conn.fetch(
        "SELECT cause, invoice_id, payment_intent_id FROM clawback_causes"
        " WHERE (invoice_id = $1 OR (invoice_id IS NULL AND payment_intent_id = $2))"
        " AND withdrawn_at IS NULL ORDER BY at, cause",
        invoice_id,
        payment_intent_id,
    )
    for row in causes:
        # Once per grant and cause: what was already taken is not taken again.
        await _claw_back(ctx, row["invoice_id"], row["payment_intent_id"], row["cause"])


def _report_taken(
    done: Sequence[ledger.Clawback], counter: Counter, event: str, **context: Any
) -> None:
    """Count and log what a claw-back or a trial's take-back took of each grant."""
    for item in done:
        if item.taken:
            count(counter.labels(item.credit_type), item.taken)
        log.info(
            event,
            **context,
            grant_id=item.grant_id,
            credit_type=item.credit_type,
            taken=item.taken,
            already_spent=item.already_spent,
        )
