"""The payments API: create (PaymentIntent or Checkout), read, refund; the product list.

Creating a payment, in order:

1. price the cart from the catalog (the client's amounts are ignored);
2. find or create the member's Stripe customer (``customers.ensure``);
3. cancel the intents of the cart's bookings' failed payments, so a failed
   payment cannot be completed after the booking is paid again;
4. insert the pending payment and hold its bookings: the partial unique index
   makes a second live payment for a booking a 409, however the requests race;
5. call Stripe with an idempotency key derived from the request's
   ``Idempotency-Key``; the payment id (also derived from it) is in the
   metadata, so an event that arrives before the answer finds the row;
6. answer with the client secret (or the Checkout URL).

A retry with the same Idempotency-Key finds its own payment in step 4 and
gets the same intent from Stripe in step 5.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import stripe
from aiohttp import web

from services.subscriptions import customers, staff_audit
from services.subscriptions.payments import contract, metrics, pricing, states, store
from services.subscriptions.payments.settings import PaymentsSettings
from shared import audit, catalog, runtime
from shared.api.pagination import Page, decode_cursor, page_of
from shared.api.service import Call, Empty, ServiceRoutes
from shared.clock import from_unix
from shared.db import DbConnection
from shared.http.errors import ApiError, conflict, invalid_field, not_found, unprocessable
from shared.logging import get_logger
from shared.stripe_calls import StripeCalls, is_transient

log = get_logger(__name__)

SETTINGS = web.AppKey("payments_settings", PaymentsSettings)


def _stripe(call: Call[Any, Any]) -> StripeCalls:
    calls = call.request.app.get(runtime.STRIPE)
    if calls is None:
        raise ApiError(503, "stripe_unavailable", "Stripe is not configured")
    return calls


def _settings(call: Call[Any, Any]) -> PaymentsSettings:
    return call.request.app[SETTINGS]


def _metadata(payment_id: str, user_id: str, refs: list[str]) -> dict[str, str]:
    # One key per booking ref: a value holds 500 characters, a cart up to 20 refs.
    data = {"payment_id": payment_id, "user_id": user_id, "booking_count": str(len(refs))}
    data.update({f"booking_ref_{i + 1}": ref for i, ref in enumerate(refs)})
    return data


_DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_redirect(url: str, origins: list[str]) -> bool:
    """Whether ``url`` is on one of ``origins`` ("scheme://host" allows any port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    for origin in origins:
        allowed = urlsplit(origin)
        if (allowed.scheme, allowed.hostname) != (parts.scheme, parts.hostname):
            continue
        if allowed.port is None or allowed.port == (port or _DEFAULT_PORTS[parts.scheme]):
            return True
    return False


async def _release_failed(call: Call[Any, Any], stripe_calls: StripeCalls, refs: list[str]) -> None:
    """Close what Stripe still keeps open of failed payments of these bookings
    (an intent the browser could confirm again, a Checkout page the member
    could retry on) before paying them again: a booking is charged once."""
    rows = await call.pool.fetch(
        "SELECT DISTINCT p.id, p.user_id, p.stripe_payment_intent_id, p.stripe_checkout_session_id"
        " FROM payments p JOIN payment_bookings b ON b.payment_id = p.id"
        " WHERE b.booking_ref = ANY($1::text[]) AND p.status = 'failed'",
        refs,
    )
    for row in rows:
        if row["stripe_checkout_session_id"] is not None:
            # Checkout owns its intent: the session is what gets closed.
            still_paying = await _expire_session(stripe_calls, row["stripe_checkout_session_id"])
        elif row["stripe_payment_intent_id"] is not None:
            still_paying = await _cancel_intent(stripe_calls, row["stripe_payment_intent_id"])
        else:
            continue
        if still_paying is not None and row["user_id"] != call.caller.user_id:
            # Another member's payment: the slot is taken, its id is theirs.
            raise conflict("booking_already_paid", "the booking is being paid")
        if still_paying is not None:
            raise conflict(
                "booking_already_paid",
                f"payment {row['id']} is being paid ({still_paying})",
                payment_id=row["id"],
            )


async def _cancel_intent(stripe_calls: StripeCalls, intent_id: str) -> str | None:
    """Cancel an intent; its status if it can no longer be (it is being paid)."""

    async def cancel(c: stripe.StripeClient) -> stripe.PaymentIntent:
        return await c.v1.payment_intents.cancel_async(
            intent_id,
            {"cancellation_reason": "abandoned"},
            {"idempotency_key": f"cancel-{intent_id}"},
        )

    async def retrieve(c: stripe.StripeClient) -> stripe.PaymentIntent:
        return await c.v1.payment_intents.retrieve_async(intent_id)

    try:
        await stripe_calls.call("cancel payment intent", cancel)
    except stripe.InvalidRequestError:
        current = await stripe_calls.call("retrieve payment intent", retrieve)
        if current.status != "canceled":
            return str(current.status)
    return None


async def _expire_session(stripe_calls: StripeCalls, session_id: str) -> str | None:
    """Expire a Checkout session; its status if it was completed instead."""

    async def expire(c: stripe.StripeClient) -> stripe.checkout.Session:
        return await c.v1.checkout.sessions.expire_async(
            session_id, options={"idempotency_key": f"expire-{session_id}"}
        )

    async def retrieve(c: stripe.StripeClient) -> stripe.checkout.Session:
        return await c.v1.checkout.sessions.retrieve_async(session_id)

    try:
        await stripe_calls.call("expire checkout session", expire)
    except stripe.InvalidRequestError:
        current = await stripe_calls.call("retrieve checkout session", retrieve)
        if current.status == "complete":
            return "complete"
    return None


async def _prepare(call: Call[Any, Any], flow: str) -> tuple[str, pricing.Priced, Any]:
    priced = pricing.price(call.body.items, catalog.default(), _settings(call))
    stripe_calls = _stripe(call)
    customer = await customers.ensure(
        call.pool, stripe_calls, call.caller.user_id, call.caller.email
    )
    await _release_failed(call, stripe_calls, priced.booking_refs)
    payment_id = store.payment_id_from(call.stripe_key("payment-id"))
    row = await store.claim(
        call.pool,
        payment_id=payment_id,
        flow=flow,
        user_id=call.caller.user_id,
        customer_id=customer.stripe_customer_id,
        priced=priced,
    )
    if row["status"] in states.RELEASED and row["stripe_payment_intent_id"] is None:
        raise conflict("payment_abandoned", f"payment {payment_id} was not created; send a new key")
    return payment_id, priced, customer


async def _abandon_unless_transient(call: Call[Any, Any], payment_id: str, exc: Exception) -> None:
    # A transient failure may have reached Stripe: a retry with the same key
    # resumes this payment. Anything else never made an intent.
    if not (isinstance(exc, stripe.StripeError) and is_transient(exc)) or call.claim is None:
        await store.abandon(call.pool, payment_id)


def register(routes: ServiceRoutes) -> None:
    """Bind the payments endpoints to the service's routes."""
    routes.implement(contract.LIST_PRODUCTS)(list_products)
    routes.implement(contract.CREATE_PAYMENT)(create_payment)
    routes.implement(contract.CREATE_PAYMENT_CHECKOUT)(create_checkout)
    routes.implement(contract.SHOW_PAYMENT)(show_payment)
    routes.implement(contract.LIST_PAYMENTS)(list_payments)
    routes.implement(contract.CANCEL_PAYMENT)(cancel_payment)
    routes.implement(contract.ADMIN_LIST_PAYMENTS)(admin_list_payments)
    routes.implement(contract.ADMIN_PAYMENTS_SUMMARY)(payments_summary)
    routes.implement(contract.CREATE_PAYMENT_REFUND)(refund_payment)
    routes.implement(contract.CREATE_INVOICE_REFUND)(refund_invoice)


async def list_products(call: Call[Empty, Empty]) -> contract.ProductList:
    found = catalog.default()
    return contract.ProductList(
        data=[
            contract.ProductView(
                product=key,
                name=p.name,
                description=p.description,
                unit_amount=p.amount,
                currency=found.currency,
                max_quantity=p.max_quantity,
                grants=dict(p.grants),
            )
            for key, p in found.products.items()
        ]
    )


async def create_payment(call: Call[contract.CreatePayment, Empty]) -> contract.PaymentCreated:
    payment_id, priced, customer = await _prepare(call, "intent")
    params: dict[str, Any] = {
        "amount": priced.amount,
        "currency": priced.currency,
        "customer": customer.stripe_customer_id,
        "metadata": _metadata(payment_id, call.caller.user_id, priced.booking_refs),
        "description": f"Bookings: {', '.join(priced.booking_refs)}"[:1000],
    }
    try:
        intent = await _stripe(call).call(
            "create payment intent",
            lambda c: c.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": call.stripe_key("payment-intent")},
            ),
        )
    except Exception as exc:
        await _abandon_unless_transient(call, payment_id, exc)
        raise

    async def effect(conn: DbConnection) -> contract.PaymentCreated:
        row = await conn.fetchrow(
            "UPDATE payments SET stripe_payment_intent_id = coalesce(stripe_payment_intent_id, $2)"
            " WHERE id = $1 RETURNING status",
            payment_id,
            intent.id,
        )
        return contract.PaymentCreated(
            payment_id=payment_id,
            status=row["status"] if row else "pending",
            amount=priced.amount,
            currency=priced.currency,
            lines=priced.lines,
            client_secret=intent.client_secret or "",
            payment_intent_id=intent.id,
        )

    return await call.commit(effect)


async def create_checkout(call: Call[contract.CreateCheckout, Empty]) -> contract.CheckoutCreated:
    origins = _settings(call).payments_redirect_origins
    for field in ("success_url", "cancel_url"):
        if not allowed_redirect(getattr(call.body, field), origins):
            raise invalid_field(field, "not on the redirect origin allow-list")
    payment_id, priced, customer = await _prepare(call, "checkout")
    metadata = _metadata(payment_id, call.caller.user_id, priced.booking_refs)
    expires_at = int(call.request.app[runtime.CLOCK].now().timestamp()) + 60 * (
        _settings(call).payments_checkout_expires_minutes
    )
    params: dict[str, Any] = {
        "mode": "payment",
        "customer": customer.stripe_customer_id,
        "client_reference_id": payment_id,
        "success_url": call.body.success_url,
        "cancel_url": call.body.cancel_url,
        "expires_at": expires_at,
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        # Inline prices: the amounts are the catalog's as priced above.
        "line_items": [
            {
                "quantity": line.quantity,
                "price_data": {
                    "currency": priced.currency,
                    "unit_amount": line.unit_amount,
                    "product_data": {"name": line.name},
                },
            }
            for line in priced.lines
        ],
    }
    try:
        session = await _stripe(call).call(
            "create checkout session",
            lambda c: c.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": call.stripe_key("checkout-session")},
            ),
        )
    except Exception as exc:
        await _abandon_unless_transient(call, payment_id, exc)
        raise

    async def effect(conn: DbConnection) -> contract.CheckoutCreated:
        await conn.execute(
            "UPDATE payments SET stripe_checkout_session_id ="
            " coalesce(stripe_checkout_session_id, $2) WHERE id = $1",
            payment_id,
            session.id,
        )
        return contract.CheckoutCreated(
            payment_id=payment_id,
            amount=priced.amount,
            currency=priced.currency,
            lines=priced.lines,
            checkout_url=session.url or "",
            session_id=session.id,
            expires_at=from_unix(session.expires_at),
        )

    return await call.commit(effect)


async def cancel_payment(call: Call[Empty, Empty]) -> contract.PaymentView:
    row = await call.pool.fetchrow("SELECT * FROM payments WHERE id = $1", call.path["payment_id"])
    # The member's own decision: staff act through refunds, which are audited.
    if row is None or row["user_id"] != call.caller.user_id:
        raise not_found("payment")
    if row["status"] in states.RELEASED:
        return store.view(row, await store.booking_refs(call.pool, row["id"]))
    if row["status"] != "pending":
        raise conflict("not_cancelable", f"payment {row['id']} is {row['status']}")
    stripe_calls = _stripe(call)
    intent_id, session_id = row["stripe_payment_intent_id"], row["stripe_checkout_session_id"]
    if session_id is not None:
        still_paying = await _expire_session(stripe_calls, session_id)
    elif intent_id is not None:
        still_paying = await _cancel_intent(stripe_calls, intent_id)
    else:
        still_paying = None
        await store.abandon(call.pool, row["id"])  # Stripe never had it
    if still_paying is not None:
        raise conflict("not_cancelable", f"payment {row['id']} is being paid ({still_paying})")
    current = await call.pool.fetchrow("SELECT * FROM payments WHERE id = $1", row["id"])
    assert current is not None
    return store.view(current, await store.booking_refs(call.pool, row["id"]))


# --- reading ---------------------------------------------------------------------------


async def show_payment(call: Call[Empty, Empty]) -> contract.PaymentView:
    row = await call.pool.fetchrow("SELECT * FROM payments WHERE id = $1", call.path["payment_id"])
    if row is None or not call.caller.may_see(row["user_id"]):
        raise not_found("payment")  # another member's payment is not theirs to know of
    return store.view(row, await store.booking_refs(call.pool, row["id"]))


async def _page(
    call: Call[Any, Any], clauses: list[str], args: list[Any], limit: int, cursor: str | None
) -> Page[contract.PaymentView]:
    if cursor is not None:
        at, last_id = decode_cursor(cursor, datetime, str)
        args += [at, last_id]
        clauses.append(f"(p.created_at, p.id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await call.pool.fetch(
        f"SELECT p.* FROM payments p {where}"  # noqa: S608 - placeholders only
        f" ORDER BY p.created_at DESC, p.id DESC LIMIT ${len(args)}",
        *args,
    )
    page_rows = list(rows)
    shown = await store.views(call.pool, page_rows[:limit])
    by_id = {v.id: v for v in shown}
    return page_of(page_rows, limit, lambda r: by_id[r["id"]], lambda r: (r["created_at"], r["id"]))


async def list_payments(
    call: Call[Empty, contract.PaymentsQuery],
) -> Page[contract.PaymentView]:
    clauses: list[str] = []
    args: list[Any] = []
    owner = call.caller.owner_filter()
    if owner is not None:
        args.append(owner)
        clauses.append(f"p.user_id = ${len(args)}")
    if call.query.booking_ref is not None:
        args.append(call.query.booking_ref)
        n = len(args)
        clauses.append(
            f"p.id IN (SELECT payment_id FROM payment_bookings WHERE booking_ref = ${n})"  # noqa: S608
        )
    return await _page(call, clauses, args, call.query.limit, call.query.cursor)


def _window(
    clauses: list[str], args: list[Any], start: datetime | None, end: datetime | None
) -> None:
    if start is not None:
        args.append(start)
        clauses.append(f"p.created_at >= ${len(args)}")
    if end is not None:
        args.append(end)
        clauses.append(f"p.created_at < ${len(args)}")


async def admin_list_payments(
    call: Call[Empty, contract.AdminPaymentsQuery],
) -> Page[contract.PaymentView]:
    clauses: list[str] = []
    args: list[Any] = []
    if call.query.status is not None:
        args.append(call.query.status)
        clauses.append(f"p.status = ${len(args)}")
    _window(clauses, args, call.query.from_, call.query.to)
    return await _page(call, clauses, args, call.query.limit, call.query.cursor)


async def payments_summary(
    call: Call[Empty, contract.SummaryQuery],
) -> contract.PaymentsSummary:
    clauses: list[str] = []
    args: list[Any] = []
    _window(clauses, args, call.query.from_, call.query.to)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await call.pool.fetch(
        f"""
        SELECT p.currency,
            count(*) FILTER (WHERE p.amount_paid IS NOT NULL) AS succeeded_count,
            coalesce(sum(p.amount_paid), 0) AS succeeded_amount,
            count(*) FILTER (WHERE p.status = 'failed') AS failed_count,
            coalesce(sum(p.amount) FILTER (WHERE p.status = 'failed'), 0) AS failed_amount,
            count(*) FILTER (WHERE p.amount_refunded > 0) AS refunded_count,
            coalesce(sum(p.amount_refunded), 0) AS refunded_amount,
            count(*) FILTER (WHERE p.dispute_id IS NOT NULL) AS disputed_count,
            coalesce(sum(p.dispute_amount), 0) AS disputed_amount
        FROM payments p {where} GROUP BY p.currency
        """,  # noqa: S608 - placeholders only
        *args,
    )

    def figure(name: str) -> contract.Figure:
        return contract.Figure(
            count=sum(int(r[f"{name}_count"]) for r in rows),
            amount={r["currency"]: int(r[f"{name}_amount"]) for r in rows if r[f"{name}_count"]},
        )

    succeeded, failed = figure("succeeded"), figure("failed")
    attempts = succeeded.count + failed.count
    return contract.PaymentsSummary(
        succeeded=succeeded,
        failed=failed,
        refunded=figure("refunded"),
        disputed=figure("disputed"),
        success_rate=round(succeeded.count / attempts, 4) if attempts else None,
    )


# --- refunds ---------------------------------------------------------------------------


async def _refund(
    call: Call[contract.CreateRefund, Empty], row: asyncpg.Record, target: str
) -> contract.RefundView:
    if row["amount_paid"] is None or row["stripe_payment_intent_id"] is None:
        raise unprocessable(
            "not_paid", f"payment {row['id']} has no card charge to refund", payment_id=row["id"]
        )
    asked = await call.pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM payment_refunds"
        " WHERE payment_id = $1 AND status NOT IN ('failed', 'canceled')",
        row["id"],
    )
    # What Stripe reported, or what was asked and not reported yet, whichever is more.
    refunded = max(int(row["amount_refunded"]), int(asked))
    left = int(row["amount_paid"]) - refunded
    amount = call.body.amount if call.body.amount is not None else left
    intent_id = row["stripe_payment_intent_id"]
    request_key = call.stripe_key("refund")
    target_id = row["invoice_id"] if target == "invoice" else row["id"]

    async def audit_first() -> int:
        return await staff_audit.begin(
            call,
            action="payment.refund",
            target_type=target,
            target_id=target_id,
            reason=call.body.reason,
            details={"payment_id": row["id"], "amount": amount},
        )

    if left <= 0 or amount > left:
        # A retried request whose refund Stripe made (its answer lost) finds
        # its own refund counted in what is left: it answers with that refund.
        made = await _refund_made_by(call, intent_id, request_key)
        if made is None:
            raise invalid_field(
                "amount", f"at most {max(left, 0)} {row['currency']} is left to refund"
            )
        entry = await audit_first()
        refund, remaining = made, max(left, 0)
    else:
        # Audited before the money moves (staff_audit).
        entry = await audit_first()
        async with staff_audit.failed_if_refused(call.pool, entry):
            refund = await _stripe(call).call(
                "create refund",
                lambda c: c.v1.refunds.create_async(
                    {
                        "payment_intent": intent_id,
                        "amount": amount,
                        "reason": "requested_by_customer",
                        "metadata": {
                            "payment_id": row["id"],
                            "requested_by": call.caller.user_id,
                            "request_key": request_key,
                        },
                    },
                    {"idempotency_key": request_key},
                ),
            )
        remaining = left - refund.amount
    metrics.REFUNDS_REQUESTED.labels(target).inc()

    async def effect(conn: DbConnection) -> contract.RefundView:
        await conn.execute(
            "INSERT INTO payment_refunds (stripe_refund_id, payment_id, amount, currency, status,"
            " reason, requested_by) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (stripe_refund_id) DO NOTHING",
            refund.id,
            row["id"],
            refund.amount,
            refund.currency,
            refund.status or "pending",
            call.body.reason,
            call.caller.user_id,
        )
        await audit.settle(
            conn,
            entry,
            {"outcome": "refunded", "refund_id": refund.id, "amount": refund.amount},
        )
        return contract.RefundView(
            refund_id=refund.id,
            payment_id=row["id"],
            amount=refund.amount,
            currency=refund.currency,
            status=refund.status or "pending",
            remaining=remaining,
        )

    return await call.commit(effect)


async def _refund_made_by(
    call: Call[contract.CreateRefund, Empty], intent_id: str, request_key: str
) -> stripe.Refund | None:
    """The refund an earlier run of this request made, if Stripe has one.

    Only a request with an Idempotency-Key can be a retry of one whose answer
    was lost; its refunds carry the key derived from it in their metadata.
    """
    if call.claim is None:
        return None
    listed = await _stripe(call).call(
        "list refunds",
        lambda c: c.v1.refunds.list_async({"payment_intent": intent_id, "limit": 100}),
    )
    for refund in listed.data:
        mine = refund.metadata is not None and "request_key" in refund.metadata
        if mine and refund.metadata["request_key"] == request_key:  # type: ignore[index]
            return refund
    return None


async def refund_payment(call: Call[contract.CreateRefund, Empty]) -> contract.RefundView:
    row = await call.pool.fetchrow("SELECT * FROM payments WHERE id = $1", call.path["payment_id"])
    if row is None:
        raise not_found("payment")
    return await _refund(call, row, "payment")


async def refund_invoice(call: Call[contract.CreateRefund, Empty]) -> contract.RefundView:
    row = await call.pool.fetchrow(
        "SELECT * FROM payments WHERE invoice_id = $1", call.path["invoice_id"]
    )
    if row is None:
        raise not_found("paid invoice")
    return await _refund(call, row, "invoice")
