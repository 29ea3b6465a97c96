"""Stripe events -> dunning cases (queue ``retry.stripe-events``).

- ``invoice.payment_failed`` opens the invoice's case, once, unless the
  invoice is already known settled (events arrive in any order).
- ``invoice.paid`` closes it as recovered; ``invoice.voided`` and
  ``invoice.marked_uncollectible`` as canceled; every settled invoice is
  remembered so a late failure event cannot open a case for it.
- ``customer.subscription.deleted`` cancels the subscription's open cases.
- ``payment_method.attached`` and ``customer.updated`` with a new default
  payment method resume the customer's paused cases at once.

In observe-only mode (``DUNNING_OBSERVE_ONLY``) Stripe's Smart Retries make
the attempts: each later ``invoice.payment_failed`` is recorded as an attempt
and notified, and the last one (no ``next_payment_attempt``) exhausts the case
without an end action of ours.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.retry import cases
from services.retry.backoff import Schedule
from services.retry.settings import RetrySettings
from services.retry.stripe_objects import Customer, DunningStripeEvent, Invoice, PaymentMethod
from shared import queues
from shared.broker.handlers import Context, Handlers
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import from_unix
from shared.logging import get_logger

log = get_logger(__name__)

EVENT_TYPES = (
    "invoice.payment_failed",
    "invoice.paid",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "customer.subscription.deleted",
    "payment_method.attached",
    "customer.updated",
)


def stripe_events_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.RETRY_STRIPE,
        bindings=tuple(Binding(STRIPE_EVENTS, t) for t in EVENT_TYPES),
        retry_delays_ms=tuple(retry_delays_ms),
    )


def schedule_of(settings: RetrySettings) -> Schedule:
    return Schedule(
        first_delay=timedelta(seconds=settings.dunning_first_delay_seconds),
        factor=settings.dunning_backoff_factor,
        max_delay=timedelta(seconds=settings.dunning_max_delay_seconds),
        max_attempts=settings.dunning_max_attempts,
    )


def stripe_handlers(settings: RetrySettings) -> Handlers:
    handlers = Handlers()
    schedule = schedule_of(settings)

    @handlers.on("invoice.payment_failed", model=DunningStripeEvent)
    async def payment_failed(event: DunningStripeEvent, ctx: Context) -> None:
        invoice = Invoice.model_validate(event.data.object)
        opened = await cases.open_case(
            ctx.conn,
            ctx.outbox,
            ctx.clock.now(),
            invoice,
            schedule,
            observe_only=settings.dunning_observe_only,
            update_url=settings.dunning_update_payment_method_url,
        )
        if not settings.dunning_observe_only:
            # Our own attempts' failures come back as this event too; the
            # attempt itself recorded them.
            return
        # The event that opens the case may already be one of Stripe's retries
        # (the earlier ones lost, late, or from before this service ran), even
        # its last: it is recorded, and ends the case, like any other. The
        # opening told the member already: one event, one email.
        await _observe_stripe_attempt(ctx, invoice, notify=opened is None)

    async def _observe_stripe_attempt(ctx: Context, invoice: Invoice, *, notify: bool) -> None:
        # Stripe's first attempt opened the case; its retries are 2, 3, ...
        number = invoice.attempt_count - 1
        row = await ctx.conn.fetchrow(
            "SELECT * FROM cases WHERE invoice_id = $1 FOR UPDATE", invoice.id
        )
        if row is None or number < 1:
            return
        case = cases.Case.of(row)
        # Recorded even on a closed case (Stripe's cancellation may arrive
        # first); notified and moved only while the case is open.
        inserted = await ctx.conn.fetchval(
            "INSERT INTO attempts (invoice_id, number, started_at, finished_at, outcome, amount,"
            " currency, idempotency_key) VALUES ($1, $2, $3, $3, 'observed', $4, $5, 'stripe')"
            " ON CONFLICT DO NOTHING RETURNING true",
            invoice.id,
            number,
            ctx.clock.now(),
            case.amount_due,
            case.currency,
        )
        if not inserted or case.state != "open":
            return
        now = ctx.clock.now()
        await ctx.conn.execute(
            "UPDATE cases SET attempts = greatest(attempts, $2), updated_at = $3"
            " WHERE invoice_id = $1",
            invoice.id,
            number,
            now,
        )
        next_at = (
            from_unix(invoice.next_payment_attempt)
            if invoice.next_payment_attempt is not None
            else None
        )
        if notify:
            await cases.emit_attempt_failed(
                ctx.outbox,
                case,
                attempt=number,
                decline_code=None,
                next_attempt_at=next_at,
                paused=False,
                update_url=settings.dunning_update_payment_method_url or case.hosted_invoice_url,
            )
        if next_at is None:
            # Stripe has given up; what happens to the subscription is the
            # account's setting, not ours.
            await _stripe_gave_up(ctx, invoice.id, "leave_past_due")

    async def _stripe_gave_up(ctx: Context, invoice_id: str, end_action: str) -> None:
        """Observe-only: Stripe's retries are spent; what it did after is its own
        end action, so ours is recorded as done, never run."""
        now = ctx.clock.now()
        closed = await cases.close(
            ctx.conn,
            ctx.outbox,
            now,
            invoice_id,
            "exhausted",
            reason="stripe_retries_spent",
            end_action=end_action,
        )
        if closed is not None:
            await cases.end_action_done(ctx.conn, invoice_id, now)

    @handlers.on(
        "invoice.paid", "invoice.voided", "invoice.marked_uncollectible", model=DunningStripeEvent
    )
    async def invoice_settled(event: DunningStripeEvent, ctx: Context) -> None:
        invoice = Invoice.model_validate(event.data.object)
        if event.type == "invoice.paid":
            invoice = invoice.model_copy(update={"status": "paid"})
        elif event.type == "invoice.voided":
            invoice = invoice.model_copy(update={"status": "void"})
        else:
            invoice = invoice.model_copy(update={"status": "uncollectible"})
        await cases.settle(ctx.conn, ctx.outbox, ctx.clock.now(), invoice)

    @handlers.on("customer.subscription.deleted", model=DunningStripeEvent)
    async def subscription_deleted(event: DunningStripeEvent, ctx: Context) -> None:
        subscription_id = str(event.data.object["id"])
        details = event.data.object.get("cancellation_details") or {}
        if settings.dunning_observe_only and details.get("reason") == "payment_failed":
            # Stripe canceled it after its own retries failed.
            for row in await ctx.conn.fetch(
                "SELECT invoice_id FROM cases WHERE subscription_id = $1"
                " AND state IN ('open', 'paused')",
                subscription_id,
            ):
                await _stripe_gave_up(ctx, row["invoice_id"], "cancel_subscription")
            return
        await cases.cancel_for_subscription(
            ctx.conn, ctx.outbox, ctx.clock.now(), subscription_id, "subscription_canceled"
        )

    @handlers.on("payment_method.attached", model=DunningStripeEvent)
    async def payment_method_attached(event: DunningStripeEvent, ctx: Context) -> None:
        method = PaymentMethod.model_validate(event.data.object)
        if method.customer is not None:
            await cases.resume_for_customer(ctx.conn, ctx.clock.now(), method.customer)

    @handlers.on("customer.updated", model=DunningStripeEvent)
    async def customer_updated(event: DunningStripeEvent, ctx: Context) -> None:
        customer = Customer.model_validate(event.data.object)
        if _new_default_payment_method(customer, event.data.previous_attributes):
            await cases.resume_for_customer(ctx.conn, ctx.clock.now(), customer.id)

    return handlers


def _new_default_payment_method(customer: Customer, previous: dict[str, Any] | None) -> bool:
    """Whether the update set a (different) default payment method for invoices."""
    current = (
        customer.invoice_settings.default_payment_method if customer.invoice_settings else None
    )
    if current is None or not previous or "invoice_settings" not in previous:
        return False
    # Stripe names only the changed keys of invoice_settings: a footer or custom
    # fields changing leaves default_payment_method out, and the card (a stolen
    # one, maybe) is the same as before.
    changed = previous.get("invoice_settings") or {}
    if "default_payment_method" not in changed:
        return False
    before = changed["default_payment_method"]
    if isinstance(before, dict):
        before = before.get("id")
    return bool(before != current)
