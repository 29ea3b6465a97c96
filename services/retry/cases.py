"""Dunning cases in the ``retry`` schema: opening, claiming, recording, closing.

Every transition is one conditional ``UPDATE`` that only moves a case out of
``open``/``paused``, so a case closes once however many events, replicas and
operators race to close it; the domain event of the transition is written in
the same transaction, with an id keyed by the invoice, so it exists once too.

The schedule lives in ``next_attempt_at``. A replica claims due cases with
``FOR UPDATE SKIP LOCKED`` and, in the same short transaction, pushes their
``next_attempt_at`` forward by the lease and names itself ``lease_owner``:
the claim commits before Stripe is called, no other replica sees the case as
due while the lease runs, and if the replica dies the case simply becomes due
again when the lease ends. The attempt it was making is repeated with the
same number (``pending_attempt``), so with the same Stripe idempotency key:
Stripe answers the first request's outcome instead of charging again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg

from services.retry.backoff import Schedule, delay_before
from services.retry.stripe_objects import Invoice
from shared import billing_events, metrics
from shared.billing_events import SCHEMA_VERSION, Member
from shared.clock import from_unix
from shared.counting import count
from shared.db import DbConnection
from shared.outbox import Outbox

State = Literal["open", "paused", "recovered", "canceled", "exhausted"]
ACTIVE = ("open", "paused")
STATES: tuple[State, ...] = ("open", "paused", "recovered", "canceled", "exhausted")
SETTLED_STATUSES = frozenset({"paid", "void", "uncollectible"})


def attempt_key(invoice_id: str, number: int) -> str:
    """Stripe's idempotency key for attempt ``number`` of an invoice: the same
    attempt, repeated after a crash or a lost answer, can never charge twice."""
    return f"dunning-{invoice_id}-attempt-{number}"


def end_action_key(invoice_id: str) -> str:
    return f"dunning-{invoice_id}-end"


@dataclass(frozen=True)
class Case:
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    user_id: str | None
    email: str | None
    amount_due: int
    currency: str
    hosted_invoice_url: str | None
    state: State
    attempts: int
    pending_attempt: int | None
    next_attempt_at: datetime | None
    lease_owner: str | None
    end_action: str | None
    # An operator asked for this attempt (retry-now): it charges whatever the
    # last decline was.
    retry_requested_at: datetime | None
    # Attempts that charged nothing (the card had met a hard decline already):
    # numbered like the others, but none of DUNNING_MAX_ATTEMPTS.
    skipped_attempts: int

    @classmethod
    def of(cls, row: asyncpg.Record) -> Case:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def member(self) -> Member:
        # The product's user id travels in Stripe metadata; a customer created
        # outside the product has none, and the event says so with "".
        return Member(user_id=self.user_id or "", customer_id=self.customer_id, email=self.email)


async def open_case(
    conn: DbConnection,
    outbox: Outbox,
    now: datetime,
    invoice: Invoice,
    schedule: Schedule,
    *,
    observe_only: bool,
    update_url: str | None,
) -> Case | None:
    """Open the invoice's case on its first failure; None when there is none to open
    (already open or closed, the invoice already settled, not a renewal)."""
    if not invoice.is_renewal or invoice.status not in (None, "open"):
        return None
    await lock_invoice(conn, invoice.id)
    settled = await conn.fetchval(
        "SELECT true FROM settled_invoices WHERE invoice_id = $1", invoice.id
    )
    if settled:
        return None
    delay = None if observe_only else delay_before(schedule, 1)
    next_at = now + delay if delay is not None else None
    row = await conn.fetchrow(
        "INSERT INTO cases (invoice_id, customer_id, subscription_id, user_id, email,"
        " amount_due, currency, hosted_invoice_url, next_attempt_at, opened_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
        " ON CONFLICT (invoice_id) DO NOTHING RETURNING *",
        invoice.id,
        invoice.customer,
        invoice.subscription_id,
        invoice.user_id,
        invoice.customer_email,
        invoice.amount_remaining or invoice.amount_due,
        invoice.currency,
        invoice.hosted_invoice_url,
        next_at,
        now,
    )
    if row is None:
        return None
    case = Case.of(row)
    count(metrics.DUNNING_CASES_OPENED)
    # Attempt 0 is the renewal's own charge, made by Stripe: the member hears of
    # it now, with the date of the first of our attempts.
    await emit_attempt_failed(
        outbox,
        case,
        attempt=0,
        decline_code=None,
        next_attempt_at=next_at
        if not observe_only
        else _from_unix_or_none(invoice.next_payment_attempt),
        paused=False,
        update_url=update_url or invoice.hosted_invoice_url,
    )
    return case


async def lock_invoice(conn: DbConnection, invoice_id: str) -> None:
    """Serialise the events of one invoice for the rest of the transaction.

    A consumer handles several messages at once, so ``invoice.paid`` and a late
    ``invoice.payment_failed`` may run side by side: without the lock, each
    would miss the other's uncommitted row and a case could open for a paid
    invoice. With it, whichever commits second sees the first.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dunning:' || $1))", invoice_id)


def _from_unix_or_none(seconds: int | None) -> datetime | None:
    return from_unix(seconds) if seconds is not None else None


async def emit_attempt_failed(
    outbox: Outbox,
    case: Case,
    *,
    attempt: int,
    decline_code: str | None,
    next_attempt_at: datetime | None,
    paused: bool,
    update_url: str | None,
) -> None:
    await outbox.emit(
        "dunning.attempt_failed",
        billing_events.DunningAttemptFailed(
            member=case.member,
            invoice_id=case.invoice_id,
            subscription_id=case.subscription_id,
            attempt=attempt,
            amount=case.amount_due,
            currency=case.currency,
            decline_code=decline_code,
            next_attempt_at=next_attempt_at,
            paused=paused,
            update_payment_method_url=update_url,
        ),
        version=SCHEMA_VERSION,
        key=f"{case.invoice_id}:{attempt}",
    )


# The attempt still pending when its case closes (its replica died, or is still
# at Stripe and will record the real outcome over this one) is superseded. The
# count sees the attempts as they were before this statement: the superseded
# ones, pending until now, are added to the others that have an outcome. A
# skipped attempt charged nothing and is no attempt made.
_CLOSE = """
WITH closed AS (
    UPDATE cases SET state = $2, close_reason = $3, closed_at = $4, updated_at = $4,
        recovered_amount = $5, end_action = $6, next_attempt_at = NULL, lease_owner = NULL
    WHERE invoice_id = $1 AND state IN ('open', 'paused')
    RETURNING *
), superseded AS (
    UPDATE attempts a SET outcome = 'superseded', finished_at = $4
    FROM closed WHERE a.invoice_id = closed.invoice_id AND a.outcome = 'pending'
    RETURNING a.number
)
SELECT closed.*,
    (SELECT count(*) FROM attempts
        WHERE invoice_id = $1 AND outcome NOT IN ('pending', 'skipped'))
    + (SELECT count(*) FROM superseded) AS attempts_made
FROM closed
"""


async def close(
    conn: DbConnection,
    outbox: Outbox,
    now: datetime,
    invoice_id: str,
    state: Literal["recovered", "canceled", "exhausted"],
    *,
    reason: str,
    amount: int | None = None,
    end_action: str | None = None,
) -> Case | None:
    """Close an open or paused case; None when it was already closed (or never opened).

    One statement: the case moves, an attempt still without an outcome is
    superseded, and the attempts made are counted (for the event).
    """
    row = await conn.fetchrow(_CLOSE, invoice_id, state, reason, now, amount, end_action)
    if row is None:
        return None
    case = Case.of(row)
    attempts_made = int(row["attempts_made"])
    count(metrics.DUNNING_CASES_CLOSED.labels(state, reason))
    if state == "recovered":
        recovered = amount if amount is not None else case.amount_due
        count(metrics.DUNNING_RECOVERED_AMOUNT.labels(case.currency), recovered)
        await outbox.emit(
            "dunning.recovered",
            billing_events.DunningRecovered(
                member=case.member,
                invoice_id=case.invoice_id,
                subscription_id=case.subscription_id,
                amount=recovered,
                currency=case.currency,
                attempts=attempts_made,
            ),
            version=SCHEMA_VERSION,
            key=invoice_id,
        )
    elif state == "exhausted":
        await outbox.emit(
            "dunning.exhausted",
            billing_events.DunningExhausted(
                member=case.member,
                invoice_id=case.invoice_id,
                subscription_id=case.subscription_id,
                attempts=attempts_made,
                end_action=end_action or "leave_past_due",
            ),
            version=SCHEMA_VERSION,
            key=invoice_id,
        )
    return case


async def settle(
    conn: DbConnection,
    outbox: Outbox,
    now: datetime,
    invoice: Invoice,
) -> Case | None:
    """The invoice left ``open`` (paid, voided, written off): remember it, and close
    its case as recovered (paid) or canceled."""
    status = invoice.status or "paid"
    await lock_invoice(conn, invoice.id)
    await conn.execute(
        "INSERT INTO settled_invoices (invoice_id, status, settled_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (invoice_id) DO NOTHING",
        invoice.id,
        status,
        now,
    )
    if status == "paid":
        # An exhausted case whose end action is still to run (Stripe failed it,
        # or its replica stopped): the member has paid since, so cancelling the
        # subscription or writing the invoice off now would punish a paying
        # member. Nothing is left for the action to do; the sweep skips it.
        await conn.execute(
            "UPDATE cases SET end_action_done_at = $2, updated_at = $2 WHERE invoice_id = $1"
            " AND state = 'exhausted' AND end_action_done_at IS NULL",
            invoice.id,
            now,
        )
        return await close(
            conn,
            outbox,
            now,
            invoice.id,
            "recovered",
            reason="invoice_paid",
            amount=invoice.amount_paid,
        )
    return await close(conn, outbox, now, invoice.id, "canceled", reason=f"invoice_{status}")


async def cancel_for_subscription(
    conn: DbConnection, outbox: Outbox, now: datetime, subscription_id: str, reason: str
) -> list[Case]:
    ids = await conn.fetch(
        "SELECT invoice_id FROM cases WHERE subscription_id = $1 AND state IN ('open', 'paused')",
        subscription_id,
    )
    closed = []
    for row in ids:
        case = await close(conn, outbox, now, row["invoice_id"], "canceled", reason=reason)
        if case is not None:
            closed.append(case)
    return closed


async def resume_for_customer(conn: DbConnection, now: datetime, customer_id: str) -> int:
    """A new payment method: paused cases of the customer are due at once."""
    result = await conn.execute(
        "UPDATE cases SET state = 'open', next_attempt_at = $2, updated_at = $2"
        " WHERE customer_id = $1 AND state = 'paused' AND lease_owner IS NULL",
        customer_id,
        now,
    )
    resumed = int(result.split()[-1])
    if resumed:
        count(metrics.DUNNING_CASES_RESUMED, resumed)
    return resumed


@dataclass(frozen=True)
class Claimed:
    case: Case
    number: int

    @property
    def idempotency_key(self) -> str:
        return attempt_key(self.case.invoice_id, self.number)

    @property
    def spent(self) -> int:
        """Which of the case's DUNNING_MAX_ATTEMPTS this attempt is, should it charge:
        its number less the attempts skipped before it."""
        return self.number - self.case.skipped_attempts


_CLAIM = """
WITH due AS (
    SELECT invoice_id FROM cases
    WHERE state IN ('open', 'paused') AND next_attempt_at <= $1
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE cases c SET
    pending_attempt = CASE WHEN c.state = 'open'
        THEN coalesce(c.pending_attempt, c.attempts + 1) END,
    attempts = CASE WHEN c.state = 'open'
        THEN coalesce(c.pending_attempt, c.attempts + 1) ELSE c.attempts END,
    next_attempt_at = $3,
    lease_owner = $4,
    updated_at = $1
FROM due WHERE c.invoice_id = due.invoice_id
RETURNING c.*
"""


async def claim(
    conn: DbConnection, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[Claimed]:
    """Claim up to ``limit`` due cases for ``owner`` until ``now + lease``.

    An open case gets its attempt row (pending until the outcome is known); a
    paused case that is due has waited its longest for a new payment method
    and is handed over to be exhausted (number 0: no attempt).
    """
    async with conn.transaction():
        rows = await conn.fetch(_CLAIM, now, limit, now + lease, owner)
        claimed = [Claimed(Case.of(r), r["pending_attempt"] or 0) for r in rows]
        opened = [c for c in claimed if c.number]
        if opened:
            await conn.execute(
                "INSERT INTO attempts (invoice_id, number, started_at, amount, currency,"
                " idempotency_key, replica)"
                " SELECT *, $7::text FROM unnest($1::text[], $2::int[], $3::timestamptz[],"
                " $4::bigint[], $5::text[], $6::text[])"
                " ON CONFLICT (invoice_id, number) DO NOTHING",
                [c.case.invoice_id for c in opened],
                [c.number for c in opened],
                [now] * len(opened),
                [c.case.amount_due for c in opened],
                [c.case.currency for c in opened],
                [c.idempotency_key for c in opened],
                owner,
            )
    return claimed


async def record_attempt(
    conn: DbConnection,
    now: datetime,
    claimed: Claimed,
    outcome: str,
    *,
    decline_code: str | None = None,
    amount: int | None = None,
) -> None:
    await conn.execute(
        "UPDATE attempts SET outcome = $3, decline_code = $4, finished_at = $5,"
        " amount = coalesce($6, amount)"
        " WHERE invoice_id = $1 AND number = $2",
        claimed.case.invoice_id,
        claimed.number,
        outcome,
        decline_code,
        now,
        amount,
    )
    count(metrics.DUNNING_ATTEMPTS.labels(outcome, decline_code or ""))


async def holds(conn: DbConnection, claimed: Claimed, owner: str) -> bool:
    """Whether ``owner`` still holds the case (open, and not taken over), locking it
    for the rest of the transaction."""
    held = await conn.fetchval(
        "SELECT true FROM cases WHERE invoice_id = $1 AND lease_owner = $2"
        " AND state IN ('open', 'paused') FOR UPDATE",
        claimed.case.invoice_id,
        owner,
    )
    return bool(held)


async def reschedule(
    conn: DbConnection,
    invoice_id: str,
    now: datetime,
    next_attempt_at: datetime | None,
    *,
    state: Literal["open", "paused"] = "open",
    decline_code: str | None = None,
    finished: bool = True,
    skipped: bool = False,
) -> None:
    """After an attempt: the next one is due at ``next_attempt_at`` (``finished``:
    the attempt is done; otherwise it is repeated with the same number;
    ``skipped``: it charged nothing, and spent none of the case's attempts)."""
    await conn.execute(
        "UPDATE cases SET state = $2, next_attempt_at = $3, lease_owner = NULL,"
        " pending_attempt = CASE WHEN $4 THEN NULL ELSE pending_attempt END,"
        " retry_requested_at = CASE WHEN $4 THEN NULL ELSE retry_requested_at END,"
        " last_decline_code = coalesce($5, last_decline_code), updated_at = $6,"
        " skipped_attempts = skipped_attempts + CASE WHEN $7 THEN 1 ELSE 0 END"
        " WHERE invoice_id = $1",
        invoice_id,
        state,
        next_attempt_at,
        finished,
        decline_code,
        now,
        skipped,
    )


def next_attempt(schedule: Schedule, now: datetime, attempts_spent: int) -> datetime | None:
    delay = delay_before(schedule, attempts_spent + 1)
    return now + delay if delay is not None else None


async def end_action_done(conn: DbConnection, invoice_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE cases SET end_action_done_at = $2 WHERE invoice_id = $1"
        " AND end_action_done_at IS NULL",
        invoice_id,
        now,
    )


async def end_actions_due(
    conn: DbConnection, now: datetime, stale_before: datetime, limit: int
) -> list[Case]:
    """Exhausted cases whose end action has not been done, left by a replica that
    stopped in between (claimed with a fresh ``updated_at`` as the lease)."""
    rows = await conn.fetch(
        "WITH due AS (SELECT invoice_id FROM cases WHERE state = 'exhausted'"
        " AND end_action_done_at IS NULL AND updated_at <= $2"
        " ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
        " UPDATE cases c SET updated_at = $1 FROM due WHERE c.invoice_id = due.invoice_id"
        " RETURNING c.*",
        now,
        stale_before,
        limit,
    )
    return [Case.of(r) for r in rows]
