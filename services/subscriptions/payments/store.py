"""The payments tables: claiming bookings, deriving status, emitting domain events."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

from services.subscriptions.payments import metrics, states
from services.subscriptions.payments.contract import Dispute, Line, PaymentView
from services.subscriptions.payments.pricing import Priced
from shared import billing_events as be
from shared import db, mirror
from shared.counting import count
from shared.db import DbConnection
from shared.http.errors import conflict
from shared.logging import get_logger
from shared.outbox import Outbox

log = get_logger(__name__)

SCHEMA_VERSION = be.SCHEMA_VERSION


def payment_id_from(seed: str) -> str:
    return "pay_" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def invoice_payment_id(invoice_id: str) -> str:
    """The payment row of an invoice's charge: the same id from every event about it."""
    return payment_id_from(f"invoice\0{invoice_id}")


_INSERT = """
INSERT INTO payments (id, kind, flow, user_id, stripe_customer_id, status, amount,
                      currency, lines, fee)
VALUES ($1, 'booking', $2, $3, $4, 'pending', $5, $6, $7, $8)
"""
_HOLDER = """
SELECT b.booking_ref, p.id, p.status, p.user_id
FROM payment_bookings b JOIN payments p ON p.id = b.payment_id
WHERE b.live AND b.booking_ref = ANY($1::text[]) ORDER BY b.booking_ref LIMIT 1
"""


async def claim(
    pool: asyncpg.Pool[Any],
    *,
    payment_id: str,
    flow: str,
    user_id: str,
    customer_id: str,
    priced: Priced,
) -> asyncpg.Record:
    """Insert the pending payment and hold its bookings, or 409 naming the
    payment that holds one. A payment already there (a retried request with the
    same Idempotency-Key) is returned as it is."""
    async with db.transaction(pool) as conn:
        existing = await conn.fetchrow("SELECT * FROM payments WHERE id = $1", payment_id)
        if existing is not None:
            return existing  # type: ignore[no-any-return]
        await conn.execute(
            _INSERT,
            payment_id,
            flow,
            user_id,
            customer_id,
            priced.amount,
            priced.currency,
            [line.model_dump() for line in priced.lines],
            priced.fee,
        )
        try:
            # A savepoint: on a conflict the transaction is still usable to
            # say who holds the booking (and then rolls back as a whole).
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO payment_bookings (payment_id, booking_ref) VALUES ($1, $2)",
                    [(payment_id, ref) for ref in priced.booking_refs],
                )
        except asyncpg.UniqueViolationError:
            holder = await conn.fetchrow(_HOLDER, priced.booking_refs)
            ref = holder["booking_ref"] if holder else "?"
            if holder is None or holder["user_id"] != user_id:
                # A booking ref is a slot anyone may try to pay; the payment
                # holding it is its member's own, never named to another.
                raise conflict(
                    "booking_already_paid", f"booking {ref} is already paid", booking_ref=ref
                ) from None
            raise conflict(
                "booking_already_paid",
                f"booking {ref} already has payment {holder['id']}",
                booking_ref=ref,
                payment_id=holder["id"],
            ) from None
        row = await conn.fetchrow("SELECT * FROM payments WHERE id = $1", payment_id)
        assert row is not None
        return row  # type: ignore[no-any-return]


async def abandon(pool: asyncpg.Pool[Any], payment_id: str) -> None:
    """A payment Stripe never took (the create call was refused): release its bookings.

    Given up after a transient failure, Stripe may have made the intent all
    the same, and its ``payment_intent.created`` may arrive afterwards. Nobody
    holds its client secret, so it can never be paid: the cancellation is
    kept as the intent's version at this moment, and that older event (its
    ``created`` is before now) is stale instead of taking the bookings back.
    """
    async with db.transaction(pool) as conn:
        given_up = await conn.fetchval(
            "UPDATE payments SET status = 'canceled', intent_status = 'canceled',"
            " updated_at = now() WHERE id = $1 AND status = 'pending' RETURNING id",
            payment_id,
        )
        if given_up is not None:
            await mirror.supersede(
                conn,
                table="payments",
                row_id=payment_id,
                progress=(states.intent_progress("canceled"),),
            )
        await conn.execute(
            "UPDATE payment_bookings SET live = false WHERE payment_id = $1", payment_id
        )


async def booking_refs(conn: DbConnection | asyncpg.Pool[Any], payment_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT booking_ref FROM payment_bookings WHERE payment_id = $1 ORDER BY booking_ref",
        payment_id,
    )
    return [r["booking_ref"] for r in rows]


async def refresh(conn: DbConnection, payment_id: str) -> tuple[str, asyncpg.Record]:
    """Derive the status from the row's Stripe facts; returns (status before, row now)."""
    row = await conn.fetchrow("SELECT * FROM payments WHERE id = $1", payment_id)
    assert row is not None
    before = row["status"]
    after = states.overall(
        row["intent_status"], row["amount_paid"], row["amount_refunded"], row["dispute_status"]
    )
    if before == "failed" and after == "canceled":
        # The declined intent canceled when its bookings are paid again (or
        # its Checkout expires): the payment stays the failure it was, in the
        # history and in the summary's failed count.
        after = before
    if after == before:
        return before, row
    row = await conn.fetchrow(
        "UPDATE payments SET status = $2, updated_at = now() WHERE id = $1 RETURNING *",
        payment_id,
        after,
    )
    assert row is not None
    if states.live(before) != states.live(after):
        await _hold(conn, payment_id, states.live(after))
    return before, row


async def _hold(conn: DbConnection, payment_id: str, live: bool) -> None:
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE payment_bookings SET live = $2 WHERE payment_id = $1", payment_id, live
            )
    except asyncpg.UniqueViolationError:
        # A failed intent paid after all while its booking was paid again by
        # another payment: Stripe's truth is kept, and an operator must refund one.
        log.error("booking_paid_twice", payment=payment_id)


# --- domain events -------------------------------------------------------------------


async def member(conn: DbConnection, row: asyncpg.Record) -> be.Member:
    user_id = row["user_id"]
    if user_id is None and row["stripe_customer_id"]:
        user_id = await conn.fetchval(
            "SELECT user_id FROM customers WHERE stripe_customer_id = $1", row["stripe_customer_id"]
        )
    email = None
    if user_id is not None:
        email = await conn.fetchval("SELECT email FROM customers WHERE user_id = $1", user_id)
    # An invoice of a customer this product did not create has no user id.
    return be.Member(
        user_id=user_id or "", customer_id=row["stripe_customer_id"] or "", email=email
    )


async def ref(conn: DbConnection, row: asyncpg.Record) -> be.PaymentRef:
    return be.PaymentRef(
        payment_id=row["id"],
        payment_intent_id=row["stripe_payment_intent_id"],
        charge_id=row["stripe_charge_id"],
        booking_refs=await booking_refs(conn, row["id"]),
        invoice_id=row["invoice_id"],
        subscription_id=row["subscription_id"],
    )


def _products(row: asyncpg.Record) -> dict[str, int]:
    counted: dict[str, int] = {}
    for line in row["lines"] or []:
        if line.get("booking_ref") is not None:
            counted[line["product"]] = counted.get(line["product"], 0) + int(line["quantity"])
    return counted


PAID = frozenset({"succeeded", "partially_refunded", "refunded", "disputed"})


async def announce(
    conn: DbConnection,
    outbox: Outbox,
    *,
    intent_before: str,
    status_before: str,
    row: asyncpg.Record,
    key: str,
) -> None:
    """The domain event of a booking payment's outcome, if the intent reached one.

    Decided on the intent's own status, not the derived one: a refund or a
    dispute that arrived before the intent's success must not hide it.
    """
    intent = row["intent_status"]
    if intent == intent_before or row["kind"] != "booking":
        return
    if intent == "succeeded":
        count(metrics.PAYMENT_OUTCOMES.labels("succeeded"))
        count(metrics.AMOUNT_COLLECTED.labels(row["currency"]), row["amount_paid"] or 0)
        data: Any = be.PaymentSucceeded(
            member=await member(conn, row),
            payment=await ref(conn, row),
            amount=row["amount_paid"] or row["amount"],
            currency=row["currency"],
            products=_products(row),
        )
        await outbox.emit("payment.succeeded", data, version=SCHEMA_VERSION, key=row["id"])
    elif intent == "failed":
        count(metrics.PAYMENT_OUTCOMES.labels("failed"))
        data = be.PaymentFailed(
            member=await member(conn, row),
            payment=await ref(conn, row),
            amount=row["amount"],
            currency=row["currency"],
            failure_code=row["failure_code"],
            decline_code=row["decline_code"],
        )
        await outbox.emit("payment.failed", data, version=SCHEMA_VERSION, key=key)
    elif intent in ("canceled", "expired") and states.live(status_before):
        # Only a payment that held its bookings releases them; a failed one
        # had released them already.
        count(metrics.PAYMENT_OUTCOMES.labels(intent))
        data = be.PaymentCanceled(
            member=await member(conn, row), payment=await ref(conn, row), reason=intent
        )
        await outbox.emit("payment.canceled", data, version=SCHEMA_VERSION, key=row["id"])


# --- reading ----------------------------------------------------------------------------


def view(row: asyncpg.Record, refs: list[str]) -> PaymentView:
    dispute = None
    if row["dispute_id"] is not None:
        dispute = Dispute(
            id=row["dispute_id"],
            status=row["dispute_status"] or "",
            amount=row["dispute_amount"],
            reason=row["dispute_reason"],
        )
    return PaymentView(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        user_id=row["user_id"],
        amount=row["amount"],
        currency=row["currency"],
        lines=[Line.model_validate(line) for line in row["lines"] or []],
        booking_refs=refs,
        invoice_id=row["invoice_id"],
        subscription_id=row["subscription_id"],
        payment_intent_id=row["stripe_payment_intent_id"],
        checkout_session_id=row["stripe_checkout_session_id"],
        charge_id=row["stripe_charge_id"],
        amount_paid=row["amount_paid"],
        paid_at=row["paid_at"],
        failure_code=row["failure_code"],
        decline_code=row["decline_code"],
        amount_refunded=row["amount_refunded"],
        dispute=dispute,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def views(conn: DbConnection | asyncpg.Pool[Any], rows: list[Any]) -> list[PaymentView]:
    ids = [r["id"] for r in rows]
    found = await conn.fetch(
        "SELECT payment_id, booking_ref FROM payment_bookings WHERE payment_id = ANY($1::text[])"
        " ORDER BY booking_ref",
        ids,
    )
    by_payment: dict[str, list[str]] = {}
    for f in found:
        by_payment.setdefault(f["payment_id"], []).append(f["booking_ref"])
    return [view(r, by_payment.get(r["id"], [])) for r in rows]
