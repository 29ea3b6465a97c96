"""Stripe events -> payments, on the queue ``subscriptions.payments``.

Idempotent (the consumer's inbox) and order-tolerant:

- a payment intent is mirrored with shared/mirror.py (the event's time, then
  how far the intent got), so a late ``payment_intent.created`` never undoes
  ``succeeded``; the payment is found by ``metadata.payment_id``, which the row
  had before Stripe was called, so an event that beats the create call's
  answer still lands;
- a Checkout session likewise; one whose mode is not ``payment`` belongs to
  subscriptions and is ignored here;
- a charge's refunds are kept one by one as ``charge.refunded`` lists them
  (read from Stripe when the event leaves them out, as current API versions
  do; a refund's status only moves forward), the amount refunded is the sum of
  those not failed, and each refund is announced once; ``charge.refund.updated``
  brings the refund that fails (or is canceled) after looking succeeded,
  which gives the amount back and is announced once too
  (``payment.refund_failed``);
- a dispute is announced the first time any of its events arrives, and its
  close the first time a closed status does (``payment.dispute_closed``);
- an invoice's charge is linked from ``invoice_payment.paid`` (invoice <->
  payment intent) and ``invoice.paid`` (subscription, customer), whichever
  comes first, so its refunds and disputes carry the invoice.

A refund or dispute of a charge not linked yet waits in the retry queues
(``RetryLater``); one that never links ends in the dead-letter queue for an
operator, as nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any

from services.subscriptions.payments import metrics, states, store
from shared import billing_events as be
from shared import mirror, queues
from shared.broker.errors import RetryLater
from shared.broker.handlers import Context, Handlers, Refetch
from shared.broker.topology import STRIPE_EVENTS, Binding, ConsumerQueue
from shared.clock import from_unix
from shared.counting import count
from shared.events import StripeEvent
from shared.logging import get_logger

log = get_logger(__name__)

handlers = Handlers()

BINDINGS = (
    "payment_intent.*",
    "checkout.session.*",
    "charge.refunded",
    "charge.refund.updated",
    "charge.dispute.*",
    "invoice_payment.paid",
    "invoice.paid",
)


def payments_queue(retry_delays_ms: list[int]) -> ConsumerQueue:
    return ConsumerQueue(
        name=queues.SUBSCRIPTIONS_PAYMENTS,
        bindings=tuple(Binding(STRIPE_EVENTS, key) for key in BINDINGS),
        retry_delays_ms=tuple(retry_delays_ms),
    )


def _id(value: Any) -> str | None:
    """An id field that may come expanded."""
    if isinstance(value, dict):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


# --- payment intents ------------------------------------------------------------------


@handlers.on("payment_intent.*", model=StripeEvent)
async def apply_payment_intent(event: StripeEvent, ctx: Context) -> None:
    pi = dict(ctx.fetched or event.data.object)
    payment_id = (pi.get("metadata") or {}).get("payment_id")
    if not payment_id:
        return  # an invoice's intent, or not this product's: linked elsewhere
    row = await ctx.conn.fetchrow(
        "SELECT stripe_payment_intent_id, intent_status, status FROM payments"
        " WHERE id = $1 FOR UPDATE",
        payment_id,
    )
    if row is None:
        log.warning("payment_intent_for_unknown_payment", payment=payment_id, intent=pi["id"])
        return
    if row["stripe_payment_intent_id"] is None:
        await ctx.conn.execute(
            "UPDATE payments SET stripe_payment_intent_id = $2 WHERE id = $1", payment_id, pi["id"]
        )
    elif row["stripe_payment_intent_id"] != pi["id"]:
        log.warning("second_intent_for_payment", payment=payment_id, intent=pi["id"])
        return
    status = states.intent_status(pi)
    error = pi.get("last_payment_error") or {}
    snapshot = {
        "status": status,
        "amount_received": pi.get("amount_received"),
        "latest_charge": _id(pi.get("latest_charge")),
        "error": [error.get("code"), error.get("decline_code")],
    }
    verdict = await mirror.decide(
        ctx,
        kind="payment_intent",
        table="payments",
        id_column="stripe_payment_intent_id",
        stripe_id=pi["id"],
        version=mirror.Version.of(event.created, states.intent_progress(status)),
        state_digest=mirror.digest(snapshot),
    )
    if verdict is not mirror.Verdict.APPLY:
        return
    await ctx.conn.execute(
        """
        UPDATE payments SET
            intent_status = $2,
            amount_paid = CASE WHEN $2 = 'succeeded' THEN $3::bigint ELSE amount_paid END,
            paid_at = CASE WHEN $2 = 'succeeded' THEN coalesce(paid_at, $4) ELSE paid_at END,
            stripe_charge_id = coalesce($5, stripe_charge_id),
            failure_code = CASE WHEN $2 = 'failed' THEN $6 ELSE failure_code END,
            decline_code = CASE WHEN $2 = 'failed' THEN $7 ELSE decline_code END,
            version_created = $8, version_progress = $9, version_digest = $10,
            updated_at = now()
        WHERE id = $1
        """,
        payment_id,
        status,
        pi.get("amount_received") or pi.get("amount"),
        from_unix(event.created),
        snapshot["latest_charge"],
        error.get("code"),
        error.get("decline_code"),
        from_unix(event.created),
        [states.intent_progress(status)],
        mirror.digest(snapshot),
    )
    _, now = await store.refresh(ctx.conn, payment_id)
    await store.announce(
        ctx.conn,
        ctx.outbox,
        intent_before=row["intent_status"],
        status_before=row["status"],
        row=now,
        key=f"{payment_id}:{event.id}",
    )


# --- checkout sessions --------------------------------------------------------------


@handlers.on("checkout.session.*", model=StripeEvent)
async def apply_checkout_session(event: StripeEvent, ctx: Context) -> None:
    session = dict(ctx.fetched or event.data.object)
    if session.get("mode") != "payment":
        return  # subscription and setup sessions are the subscriptions' concern
    payment_id = (session.get("metadata") or {}).get("payment_id") or session.get(
        "client_reference_id"
    )
    if not payment_id:
        return
    row = await ctx.conn.fetchrow(
        "SELECT intent_status, status FROM payments WHERE id = $1 AND flow = 'checkout' FOR UPDATE",
        payment_id,
    )
    if row is None:
        return
    status = str(session.get("status"))
    snapshot = {"status": status, "payment_intent": _id(session.get("payment_intent"))}
    progress = 0 if status == "open" else 1
    verdict = await mirror.decide(
        ctx,
        kind="checkout_session",
        table="payment_checkout_sessions",
        stripe_id=session["id"],
        version=mirror.Version.of(event.created, progress),
        state_digest=mirror.digest(snapshot),
    )
    if verdict is not mirror.Verdict.APPLY:
        return
    await ctx.conn.execute(
        """
        INSERT INTO payment_checkout_sessions AS s (stripe_id, payment_id, status,
            version_created, version_progress, version_digest)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (stripe_id) DO UPDATE SET status = EXCLUDED.status,
            version_created = EXCLUDED.version_created,
            version_progress = EXCLUDED.version_progress,
            version_digest = EXCLUDED.version_digest
        """,
        session["id"],
        payment_id,
        status,
        from_unix(event.created),
        [progress],
        mirror.digest(snapshot),
    )
    await ctx.conn.execute(
        """
        UPDATE payments SET
            stripe_checkout_session_id = coalesce(stripe_checkout_session_id, $2),
            stripe_payment_intent_id = coalesce(stripe_payment_intent_id, $3),
            -- An expired session never made a payment intent: nothing to wait for.
            intent_status = CASE WHEN $4 = 'expired' AND intent_status = 'pending'
                                 THEN 'expired' ELSE intent_status END,
            updated_at = now()
        WHERE id = $1
        """,
        payment_id,
        session["id"],
        snapshot["payment_intent"],
        status,
    )
    _, now = await store.refresh(ctx.conn, payment_id)
    await store.announce(
        ctx.conn,
        ctx.outbox,
        intent_before=row["intent_status"],
        status_before=row["status"],
        row=now,
        key=f"{payment_id}:{event.id}",
    )


# --- charges: refunds and disputes ------------------------------------------------------


async def _payment_of_charge(ctx: Context, intent_id: str | None, metadata: dict[str, Any]) -> Any:
    row = None
    if intent_id:
        row = await ctx.conn.fetchrow(
            "SELECT * FROM payments WHERE stripe_payment_intent_id = $1 FOR UPDATE", intent_id
        )
    if row is None and metadata.get("payment_id"):
        row = await ctx.conn.fetchrow(
            "SELECT * FROM payments WHERE id = $1 FOR UPDATE", metadata["payment_id"]
        )
    if row is None:
        # Most likely an invoice's charge whose invoice_payment.paid has not
        # arrived yet: wait for it in the retry queues.
        raise RetryLater(f"no payment for intent {intent_id} yet")
    return row


UNCOUNTED = ("failed", "canceled")


def _refund_rank(status: str) -> int:
    return {"succeeded": 1, "failed": 2, "canceled": 2}.get(status, 0)


_UPSERT_REFUND = """
INSERT INTO payment_charge_refunds AS r (stripe_refund_id, payment_id, amount, status, rank)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (stripe_refund_id) DO UPDATE SET status = EXCLUDED.status, rank = EXCLUDED.rank
    WHERE EXCLUDED.rank > r.rank
RETURNING (xmax = 0) AS inserted
"""


async def _apply_refunds(
    ctx: Context, row: Any, charge_id: str | None, refunds: list[dict[str, Any]]
) -> None:
    """Record refunds as Stripe has them, derive the amount refunded, and
    announce each refund once, when it is first seen not failed, and its
    failure once, when one announced moves to failed or canceled."""
    first_seen = []
    withdrawn = []
    for refund in refunds:
        status = str(refund.get("status"))
        # The payment's row is locked: its refunds' rows change under this lock only.
        before = await ctx.conn.fetchval(
            "SELECT status FROM payment_charge_refunds WHERE stripe_refund_id = $1", refund["id"]
        )
        inserted = await ctx.conn.fetchval(
            _UPSERT_REFUND,
            refund["id"],
            row["id"],
            int(refund.get("amount") or 0),
            status,
            _refund_rank(status),
        )
        if inserted and status not in UNCOUNTED:
            first_seen.append(refund)
        elif before is not None and before not in UNCOUNTED and status in UNCOUNTED:
            # Counted (and so announced) when it was first recorded; a rank
            # never goes down, so this happens once per refund.
            withdrawn.append(refund)
        # The refunds staff asked for, as Stripe now has them.
        await ctx.conn.execute(
            "UPDATE payment_refunds SET status = $2 WHERE stripe_refund_id = $1"
            " AND status NOT IN ('failed', 'canceled')",
            refund["id"],
            status,
        )
    total = int(
        await ctx.conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM payment_charge_refunds"
            " WHERE payment_id = $1 AND status NOT IN ('failed', 'canceled')",
            row["id"],
        )
    )
    await ctx.conn.execute(
        "UPDATE payments SET amount_refunded = $2, stripe_charge_id ="
        " coalesce(stripe_charge_id, $3), updated_at = now() WHERE id = $1",
        row["id"],
        total,
        charge_id,
    )
    _, now = await store.refresh(ctx.conn, row["id"])
    if total < row["amount_refunded"]:
        # Money back in the balance: payment.refund_failed below says so.
        log.warning("refund_failed", payment=row["id"], now=total, was=row["amount_refunded"])
    paid = int(now["amount_paid"] or now["amount"])
    for refund in first_seen:
        amount = int(refund.get("amount") or 0)
        count(metrics.REFUNDS.labels(row["kind"]))
        count(metrics.AMOUNT_REFUNDED.labels(now["currency"]), amount)
        await ctx.outbox.emit(
            "payment.refunded",
            be.PaymentRefunded(
                member=await store.member(ctx.conn, now),
                payment=await store.ref(ctx.conn, now),
                amount_refunded=amount,
                total_refunded=total,
                amount=paid,
                currency=now["currency"],
                full=total >= paid,
                refund_id=refund["id"],
            ),
            version=be.SCHEMA_VERSION,
            key=refund["id"],
        )
    for refund in withdrawn:
        emitted = await ctx.outbox.emit(
            "payment.refund_failed",
            be.PaymentRefundFailed(
                member=await store.member(ctx.conn, now),
                payment=await store.ref(ctx.conn, now),
                refund_id=refund["id"],
                amount_refunded=int(refund.get("amount") or 0),
                total_refunded=total,
                amount=paid,
                currency=now["currency"],
                status=str(refund.get("status")),
                failure_reason=refund.get("failure_reason"),
            ),
            version=be.SCHEMA_VERSION,
            key=refund["id"],
        )
        if emitted is not None:
            count(metrics.REFUNDS_FAILED.labels(row["kind"]))
            count(
                metrics.AMOUNT_REFUND_FAILED.labels(now["currency"]),
                int(refund.get("amount") or 0),
            )


@handlers.on("charge.refunded", model=StripeEvent)
async def apply_charge_refunded(event: StripeEvent, ctx: Context) -> None:
    charge = dict(ctx.fetched or event.data.object)
    row = await _payment_of_charge(
        ctx, _id(charge.get("payment_intent")), dict(charge.get("metadata") or {})
    )
    if row["amount_paid"] is None and charge.get("amount") is not None:
        await ctx.conn.execute(
            "UPDATE payments SET amount_paid = $2 WHERE id = $1", row["id"], charge["amount"]
        )
    refunds = [r for r in (charge.get("refunds") or {}).get("data") or [] if r.get("id")]
    total = int(charge.get("amount_refunded") or 0)
    listed = sum(int(r.get("amount") or 0) for r in refunds if r.get("status") not in UNCOUNTED)
    if total > listed and ctx.fetched is None:
        # Current API versions leave the refunds out of a charge's events:
        # read them, so each refund is kept by its own id and one that fails
        # later (charge.refund.updated) finds its row and gives its amount back.
        raise Refetch("charge", charge["id"])
    if total > listed:
        # Even Stripe's charge lists only a page of its refunds: what it does
        # not list counts as one refund per new total.
        held = await ctx.conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM payment_charge_refunds"
            " WHERE payment_id = $1 AND status NOT IN ('failed', 'canceled')"
            " AND stripe_refund_id <> ALL($2::text[])",
            row["id"],
            [r["id"] for r in refunds],
        )
        unlisted = total - listed - int(held)
        if unlisted > 0:
            lump = f"{charge['id']}:refunded:{total}"
            refunds.append({"id": lump, "amount": unlisted, "status": "succeeded"})
    await _apply_refunds(ctx, row, charge["id"], refunds)


@handlers.on("charge.refund.updated", model=StripeEvent)
async def apply_refund_update(event: StripeEvent, ctx: Context) -> None:
    """A refund that changed: above all, one that failed after looking succeeded."""
    refund = dict(event.data.object)
    intent_id = _id(refund.get("payment_intent"))
    if not intent_id:
        return  # a refund of something other than a payment intent's charge
    row = await _payment_of_charge(ctx, intent_id, dict(refund.get("metadata") or {}))
    known = await ctx.conn.fetchval(
        "SELECT true FROM payment_charge_refunds WHERE stripe_refund_id = $1", refund["id"]
    )
    if not known and refund.get("status") not in UNCOUNTED:
        # A refund still counting is first recorded from charge.refunded, which
        # also says what it may have counted without listing it.
        return
    await _apply_refunds(ctx, row, _id(refund.get("charge")), [refund])


@handlers.on("charge.dispute.*", model=StripeEvent)
async def apply_dispute(event: StripeEvent, ctx: Context) -> None:
    dispute = dict(event.data.object)
    charge_id = _id(dispute.get("charge"))
    row = await _payment_of_charge(
        ctx, _id(dispute.get("payment_intent")), dict(dispute.get("metadata") or {})
    )
    if row["dispute_id"] not in (None, dispute["id"]):
        log.warning("second_dispute", payment=row["id"], dispute=dispute["id"])
    status = str(dispute.get("status"))
    held = row["dispute_status"] if row["dispute_id"] == dispute["id"] else None
    if held in states.DISPUTE_CLOSED and status not in states.DISPUTE_CLOSED:
        return  # a closed dispute never reopens: this is an older event
    first_seen = row["dispute_id"] != dispute["id"]
    await ctx.conn.execute(
        "UPDATE payments SET dispute_id = $2, dispute_status = $3, dispute_amount = $4,"
        " dispute_reason = $5, stripe_charge_id = coalesce(stripe_charge_id, $6),"
        " updated_at = now() WHERE id = $1",
        row["id"],
        dispute["id"],
        status,
        dispute.get("amount"),
        dispute.get("reason"),
        charge_id,
    )
    _, now = await store.refresh(ctx.conn, row["id"])
    if first_seen:
        count(metrics.DISPUTES.labels(row["kind"]))
        await ctx.outbox.emit(
            "payment.disputed",
            be.PaymentDisputed(
                member=await store.member(ctx.conn, now),
                payment=await store.ref(ctx.conn, now),
                dispute_id=dispute["id"],
                amount=int(dispute.get("amount") or 0),
                currency=str(dispute.get("currency") or now["currency"]),
                reason=dispute.get("reason"),
                status=status,
            ),
            version=be.SCHEMA_VERSION,
            key=dispute["id"],
        )
    if status not in states.DISPUTE_CLOSED:
        return
    # Once per dispute (the key), whichever of its closed events comes first;
    # after its payment.disputed when both come from one event.
    closed = await ctx.outbox.emit(
        "payment.dispute_closed",
        be.PaymentDisputeClosed(
            member=await store.member(ctx.conn, now),
            payment=await store.ref(ctx.conn, now),
            dispute_id=dispute["id"],
            amount=int(dispute.get("amount") or 0),
            currency=str(dispute.get("currency") or now["currency"]),
            reason=dispute.get("reason"),
            status=status,
        ),
        version=be.SCHEMA_VERSION,
        key=dispute["id"],
    )
    if closed is not None:
        count(metrics.DISPUTES_CLOSED.labels(row["kind"], status))


# --- invoices' charges ----------------------------------------------------------------

_LINK_INVOICE = """
INSERT INTO payments AS p (id, kind, flow, status, intent_status, amount, currency, invoice_id,
    stripe_payment_intent_id, stripe_customer_id, user_id, subscription_id, amount_paid, paid_at)
VALUES ($1, 'invoice', 'invoice', 'succeeded', 'succeeded', $2, $3, $4, $5, $6,
        (SELECT user_id FROM customers WHERE stripe_customer_id = $6), $7, $2, $8)
ON CONFLICT (invoice_id) DO UPDATE SET
    stripe_payment_intent_id =
        coalesce(p.stripe_payment_intent_id, EXCLUDED.stripe_payment_intent_id),
    stripe_customer_id = coalesce(p.stripe_customer_id, EXCLUDED.stripe_customer_id),
    user_id = coalesce(p.user_id, EXCLUDED.user_id),
    subscription_id = coalesce(p.subscription_id, EXCLUDED.subscription_id),
    paid_at = coalesce(p.paid_at, EXCLUDED.paid_at),
    updated_at = now()
"""


@handlers.on("invoice_payment.paid", model=StripeEvent)
async def link_invoice_payment(event: StripeEvent, ctx: Context) -> None:
    record = dict(event.data.object)
    invoice_id = _id(record.get("invoice"))
    payment = record.get("payment") or {}
    intent_id = _id(payment.get("payment_intent")) if isinstance(payment, dict) else None
    amount = int(record.get("amount_paid") or 0)
    if not invoice_id or not intent_id or amount <= 0:
        return  # paid out of band or with nothing to charge: no charge to refund
    await ctx.conn.execute(
        _LINK_INVOICE,
        store.invoice_payment_id(invoice_id),
        amount,
        record.get("currency"),
        invoice_id,
        intent_id,
        None,
        None,
        from_unix(event.created),
    )


def _subscription_of(invoice: dict[str, Any]) -> str | None:
    # Current API versions: parent.subscription_details.subscription; older: subscription.
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return _id(details.get("subscription")) or _id(invoice.get("subscription"))


@handlers.on("invoice.paid", model=StripeEvent)
async def link_invoice(event: StripeEvent, ctx: Context) -> None:
    invoice = dict(event.data.object)
    amount = int(invoice.get("amount_paid") or 0)
    if amount <= 0:
        return
    paid_at = (invoice.get("status_transitions") or {}).get("paid_at") or event.created
    await ctx.conn.execute(
        _LINK_INVOICE,
        store.invoice_payment_id(invoice["id"]),
        amount,
        invoice.get("currency"),
        invoice["id"],
        None,
        _id(invoice.get("customer")),
        _subscription_of(invoice),
        from_unix(int(paid_at)),
    )
