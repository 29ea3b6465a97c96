"""Domain events -> emails to the member (queue ``retry.notifications``).

A module of the retry service rather than a sixth service: it has no API, no
state but its outbound mail, and the same operational needs as dunning (a
schema, a broker connection, a loop of work held as rows), so a separate
deployable would add a process, a port and manifests for nothing. It cannot
block billing all the same: it consumes its own queue (own delay queues and
dead letters), and the handler only renders the email and stores it in the
``mail`` table, in the inbox's transaction, so each event yields at most one
email however often it is delivered. The SMTP conversation happens later,
outside any transaction, in ``sender.py``: a mail server that is down or slow
holds neither a database connection nor a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from services.retry.notifications.render import Renderer
from services.retry.notifications.sender import Sender
from services.retry.settings import RetrySettings
from shared import billing_events, metrics, queues, runtime
from shared.broker.handlers import Context, Handlers
from shared.broker.topology import BILLING_EVENTS, Binding, ConsumerQueue
from shared.counting import count
from shared.logging import get_logger

log = get_logger(__name__)

# Which email each domain event sends (templates/<name>.txt and .html).
TEMPLATES: dict[str, str] = {
    "subscription.activated": "subscription_confirmed",
    "subscription.renewed": "renewal_receipt",
    "subscription.trial_ending": "trial_ending",
    "dunning.attempt_failed": "payment_failed",
    "dunning.recovered": "payment_recovered",
    "subscription.canceled": "membership_ended",
    "subscription.cancellation_scheduled": "cancellation_confirmed",
    "payment.succeeded": "booking_confirmed",
    "payment.refunded": "refund_issued",
    # Announced once per refund, and only for one payment.refunded announced
    # (and so emailed) before: the member is told the money never came.
    "payment.refund_failed": "refund_failed",
}
# Bound and read, but no email of their own: the member hears of the end of a
# membership from subscription.canceled, whatever ended it, and of a failed
# renewal from dunning. Binding them also keeps every domain event routable:
# the outboxes publish mandatory, and an event no queue takes would hold its
# outbox (every later event of that service) until one is bound.
SILENT = frozenset(
    {
        "dunning.exhausted",
        "invoice.paid",
        "invoice.payment_failed",
        "payment.canceled",
        "payment.failed",
        "subscription.past_due",
    }
)


class Envelope(BaseModel):
    """A domain event as it arrives; ``data`` is read with its type's model."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: str
    schema_version: int
    data: dict[str, Any]


def notifications_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.RETRY_NOTIFICATIONS,
        bindings=tuple(Binding(BILLING_EVENTS, t) for t in (*TEMPLATES, *sorted(SILENT))),
        retry_delays_ms=tuple(retry_delays_ms),
    )


def _wanted(event_type: str, data: BaseModel) -> bool:
    if isinstance(data, billing_events.PaymentSucceeded):
        # Invoices have their own receipt (subscription.renewed).
        return bool(data.payment.booking_refs)
    return True


def handlers(settings: RetrySettings) -> Handlers:
    registry = Handlers()
    renderer = Renderer()

    @registry.on(*SILENT, model=Envelope)
    async def no_email(event: Envelope, ctx: Context) -> None:
        return None

    @registry.on(*TEMPLATES, model=Envelope)
    async def queue_email(event: Envelope, ctx: Context) -> None:
        data = billing_events.model_for(event.type).model_validate(event.data)
        member = getattr(data, "member", None)
        email = member.email if member is not None else None
        if not settings.notifications_enabled:
            count(metrics.EMAILS_FAILED.labels("disabled"))
            return
        if not email or not _wanted(event.type, data):
            count(metrics.EMAILS_FAILED.labels("no_recipient" if not email else "skipped"))
            return
        template = TEMPLATES[event.type]
        message = renderer.render(template, {"event": event, "data": data.model_dump()})
        now = ctx.clock.now()
        await ctx.conn.execute(
            "INSERT INTO mail (event_id, event_type, recipient, subject, body_text, body_html,"
            " next_try_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"
            " ON CONFLICT (event_id) DO NOTHING",
            event.id,
            event.type,
            email,
            message.subject,
            message.text,
            message.html,
            now,
        )
        await ctx.conn.execute("SELECT pg_notify('mail', current_schema())")

    return registry


SENDER = web.AppKey("mail_sender", Sender)


def sender(settings: RetrySettings) -> runtime.CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        running = Sender(app[runtime.POOL], app[runtime.CLOCK], settings)
        app[SENDER] = running
        await running.start()
        yield
        await running.stop()

    return ctx
