"""Stripe's events on the subscriptions queue -> the billing state (``state/``).

Handled, each idempotent and order-proof (``shared/mirror.py``):
``customer.subscription.*`` (``trial_will_end``, ``paused``, ``resumed``
included), the invoice events below, ``checkout.session.*`` of mode
``subscription`` (booking payments consume theirs on their own queue) and
``customer.discount.*``.
"""

from __future__ import annotations

from datetime import timedelta

from services.subscriptions.state import checkout, discounts, invoices
from services.subscriptions.state import subscriptions as subs
from services.subscriptions.state.snapshots import (
    CheckoutSessionSnapshot,
    DiscountSnapshot,
    InvoiceSnapshot,
    SubscriptionSnapshot,
)
from shared import queues
from shared.broker.handlers import Context, Handlers
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.events import StripeEvent

INVOICE_EVENTS = (
    "invoice.created",
    "invoice.finalized",
    "invoice.updated",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.voided",
    "invoice.marked_uncollectible",
)
CHECKOUT_EVENTS = (
    "checkout.session.completed",
    "checkout.session.expired",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
)
ROUTING_KEYS = (
    "customer.subscription.*",
    *INVOICE_EVENTS,
    *CHECKOUT_EVENTS,
    "customer.discount.*",
)


def stripe_events_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.SUBSCRIPTIONS_STRIPE,
        bindings=tuple(Binding(STRIPE_EVENTS, key) for key in ROUTING_KEYS),
        retry_delays_ms=tuple(retry_delays_ms),
    )


def stripe_handlers(grace: timedelta = timedelta(days=7)) -> Handlers:
    """The handlers; ``grace`` is how long past_due keeps access (announced in past_due)."""
    handlers = Handlers()

    @handlers.on("customer.subscription.*", model=StripeEvent)
    async def on_subscription(event: StripeEvent, ctx: Context) -> None:
        source = (
            ctx.fetched if ctx.fetched and ctx.fetched.get("object") == "subscription" else None
        )
        snapshot = SubscriptionSnapshot.model_validate(source or event.data.object)
        await subs.apply(
            ctx,
            snapshot,
            event_id=event.id,
            event_type=event.type,
            created=event.created,
            grace=grace,
        )
        if event.type == "customer.subscription.trial_will_end":
            await subs.trial_ending(ctx, SubscriptionSnapshot.model_validate(event.data.object))

    @handlers.on(*INVOICE_EVENTS, model=StripeEvent)
    async def on_invoice(event: StripeEvent, ctx: Context) -> None:
        source = ctx.fetched if ctx.fetched and ctx.fetched.get("object") == "invoice" else None
        await invoices.apply(
            ctx,
            InvoiceSnapshot.model_validate(source or event.data.object),
            event_id=event.id,
            event_type=event.type,
            created=event.created,
            grace=grace,
        )

    @handlers.on(*CHECKOUT_EVENTS, model=StripeEvent)
    async def on_checkout(event: StripeEvent, ctx: Context) -> None:
        source = (
            ctx.fetched if ctx.fetched and ctx.fetched.get("object") == "checkout.session" else None
        )
        await checkout.apply(
            ctx,
            CheckoutSessionSnapshot.model_validate(source or event.data.object),
            event_id=event.id,
            created=event.created,
        )

    @handlers.on("customer.discount.*", model=StripeEvent)
    async def on_discount(event: StripeEvent, ctx: Context) -> None:
        await discounts.apply(
            ctx,
            DiscountSnapshot.model_validate(event.data.object),
            deleted=event.type == "customer.discount.deleted",
            created=event.created,
        )

    return handlers
