"""An invoice snapshot -> the invoices row and the facts it makes true."""

from __future__ import annotations

from datetime import timedelta

from services.subscriptions import plans
from services.subscriptions.state import members
from services.subscriptions.state import subscriptions as subs
from services.subscriptions.state.snapshots import InvoiceSnapshot, SubscriptionSnapshot
from shared import billing_events as be
from shared import mirror
from shared.broker.handlers import Context, Refetch
from shared.clock import from_unix

_UPSERT = """
INSERT INTO invoices AS i (
    stripe_invoice_id, stripe_customer_id, stripe_subscription_id, user_id, number, status,
    billing_reason, currency, amount_due, amount_paid, amount_remaining, total, attempt_count,
    next_payment_attempt, period_start, period_end, hosted_invoice_url, invoice_pdf,
    stripe_created, paid_at, last_event_id, last_event_type,
    version_created, version_progress, version_digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22, $23, $24, $25)
ON CONFLICT (stripe_invoice_id) DO UPDATE SET
    stripe_subscription_id = COALESCE(EXCLUDED.stripe_subscription_id, i.stripe_subscription_id),
    user_id = COALESCE(EXCLUDED.user_id, i.user_id),
    number = EXCLUDED.number,
    status = EXCLUDED.status,
    billing_reason = EXCLUDED.billing_reason,
    currency = EXCLUDED.currency,
    amount_due = EXCLUDED.amount_due,
    amount_paid = EXCLUDED.amount_paid,
    amount_remaining = EXCLUDED.amount_remaining,
    total = EXCLUDED.total,
    attempt_count = EXCLUDED.attempt_count,
    next_payment_attempt = EXCLUDED.next_payment_attempt,
    period_start = EXCLUDED.period_start,
    period_end = EXCLUDED.period_end,
    hosted_invoice_url = EXCLUDED.hosted_invoice_url,
    invoice_pdf = EXCLUDED.invoice_pdf,
    paid_at = EXCLUDED.paid_at,
    last_event_id = EXCLUDED.last_event_id,
    last_event_type = EXCLUDED.last_event_type,
    version_created = EXCLUDED.version_created,
    version_progress = EXCLUDED.version_progress,
    version_digest = EXCLUDED.version_digest,
    updated_at = now()
"""

PAID_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})


async def apply(
    ctx: Context,
    snapshot: InvoiceSnapshot,
    *,
    event_id: str,
    event_type: str,
    created: int,
    grace: timedelta,
) -> None:
    sub_id = snapshot.subscription_id()
    if sub_id:
        # Lock order: the subscription first, then the invoice. A
        # subscription's event locks its subscription (mirror.decide) and row,
        # then may announce subscription.activated; a paid first invoice
        # announces the same fact (the same outbox row) and then writes the
        # subscription row (subs.activate). Were the subscription locked only
        # there, the invoice would hold the outbox row while waiting for the
        # subscription row, and the subscription's event the row while
        # waiting for the outbox row: a deadlock. Taken here, before anything
        # else, it serialises an invoice's events with its subscription's.
        await mirror.lock(ctx, table="subscriptions", stripe_id=sub_id)
    sub_row = await subs.current(ctx, sub_id) if sub_id else None
    metadata = snapshot.subscription_metadata()
    if sub_id and sub_row is None and not _plan_in(metadata):
        # An invoice before its subscription, which does not say its plan
        # (ours do, in their metadata): read the subscription from Stripe and
        # apply it first, so the invoice's facts have their plan.
        fetched = ctx.fetched
        if fetched is None or fetched.get("object") != "subscription":
            raise Refetch("subscription", sub_id)
        await subs.apply(
            ctx,
            SubscriptionSnapshot.model_validate(fetched),
            event_id=event_id,
            event_type=f"{event_type} (subscription read from Stripe)",
            created=created,
            grace=grace,
        )
        sub_row = await subs.current(ctx, sub_id)
    state = snapshot.model_dump(mode="json")
    verdict = await mirror.decide(
        ctx,
        kind="invoice",
        table="invoices",
        id_column="stripe_invoice_id",
        stripe_id=snapshot.id,
        version=mirror.Version.of(created, *snapshot.progress()),
        state_digest=mirror.digest(state),
    )
    if sub_row is not None and sub_row["user_id"]:
        metadata.setdefault("user_id", sub_row["user_id"])
    member = await members.resolve(ctx, snapshot.customer, metadata)
    if verdict is mirror.Verdict.APPLY:
        start, end = snapshot.billed_period()
        await ctx.conn.execute(
            _UPSERT,
            snapshot.id,
            snapshot.customer,
            sub_id,
            member.user_id if member else None,
            snapshot.number,
            snapshot.status,
            snapshot.billing_reason,
            snapshot.currency,
            snapshot.amount_due,
            snapshot.amount_paid,
            snapshot.amount_remaining,
            snapshot.total,
            snapshot.attempt_count,
            from_unix(snapshot.next_payment_attempt) if snapshot.next_payment_attempt else None,
            start,
            end,
            snapshot.hosted_invoice_url,
            snapshot.invoice_pdf,
            from_unix(snapshot.created),
            snapshot.paid_at(),
            event_id,
            event_type,
            from_unix(created),
            list(snapshot.progress()),
            mirror.digest(state),
        )
    # The facts below are keyed by the invoice (and attempt): announcing one
    # again, from a duplicate or a late event, is a no-op in the outbox.
    if member is None:
        return
    if event_type in PAID_EVENTS and snapshot.status == "paid":
        await _paid(ctx, snapshot, member, metadata)
    elif event_type == "invoice.payment_failed":
        await ctx.outbox.emit(
            "invoice.payment_failed",
            be.InvoicePaymentFailed(
                member=member,
                invoice_id=snapshot.id,
                subscription_id=sub_id,
                amount_due=snapshot.amount_due,
                currency=snapshot.currency,
                attempt_count=snapshot.attempt_count,
                billing_reason=snapshot.billing_reason,
                hosted_invoice_url=snapshot.hosted_invoice_url,
            ),
            version=be.SCHEMA_VERSION,
            key=f"{snapshot.id}:{snapshot.attempt_count}",
        )


def _plan_in(metadata: dict[str, str]) -> be.Plan | None:
    """The plan our subscriptions carry in their metadata (an invoice repeats it)."""
    plan, interval = metadata.get("plan"), metadata.get("interval")
    if plan and interval in ("month", "year"):
        return be.Plan(plan=plan, interval=interval)
    return None


async def _paid(
    ctx: Context, snapshot: InvoiceSnapshot, member: be.Member, metadata: dict[str, str]
) -> None:
    start, end = snapshot.billed_period()
    period = be.Period(start=start, end=end) if start and end else None
    sub_id = snapshot.subscription_id()
    await ctx.outbox.emit(
        "invoice.paid",
        be.InvoicePaid(
            member=member,
            invoice_id=snapshot.id,
            subscription_id=sub_id,
            amount_paid=snapshot.amount_paid,
            currency=snapshot.currency,
            billing_reason=snapshot.billing_reason,
            period=period,
            hosted_invoice_url=snapshot.hosted_invoice_url,
        ),
        version=be.SCHEMA_VERSION,
        key=snapshot.id,
    )
    if sub_id is None:
        return
    row = await subs.current(ctx, sub_id)
    plan = (subs.plan_of(row) if row is not None else None) or _plan_in(metadata)
    if plan is None:
        return
    if snapshot.billing_reason == "subscription_create" and snapshot.amount_paid > 0:
        if row is not None and row["status"] in ("incomplete", "active"):
            # The first payment: access begins (whichever of this and the
            # subscription's own update arrives first announces it).
            await subs.activate(ctx, row, member, invoice_id=snapshot.id)
        return
    if snapshot.billing_reason == "subscription_cycle" and period is not None:
        await ctx.outbox.emit(
            "subscription.renewed",
            be.SubscriptionRenewed(
                member=member,
                subscription_id=sub_id,
                plan=plan,
                period=period,
                allotments=plans.allotments(plan.plan),
                invoice_id=snapshot.id,
                amount_paid=snapshot.amount_paid,
                currency=snapshot.currency,
            ),
            version=be.SCHEMA_VERSION,
            key=snapshot.id,
        )
