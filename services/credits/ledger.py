"""The credit ledger: grants, spends, reversals, expiry, claw-backs and what
they give back.

Rules every function here keeps (the tests prove them):

* Every change of a grant's ``remaining`` writes one ``entries`` row with the
  signed amount, in the same transaction, and moves ``balances.balance`` by the
  same amount; so for every account, sum(entries) = balance = sum(remaining).
* Every writer locks the account's ``balances`` row (``FOR UPDATE``) before
  touching its grants. That one lock serialises spends, reversals, grants, the
  sweep and claw-backs of one account, in one lock order, so they neither
  interleave nor deadlock, and a spend never sees a half-applied change.
* The database refuses a negative balance or ``remaining`` (CHECK constraints):
  a bug here fails a transaction, it never overdraws.
* A grant that holds something is ``NOT depleted`` (a column Postgres computes
  from ``remaining``, migrations/0011): queries for such grants say so, the
  predicate the spending order's and the sweep's indexes answer. No index
  names ``remaining``, so a spend's update of it stays on its page (HOT).

Spending order: lower ``priority`` first, then the soonest ``expires_at``
(never-expiring last), then the oldest grant (earliest ``granted_at``, then
lowest id). A spend writes one
entry per grant it consumed, so a reversal returns each part to its grant.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.db import DbConnection

# Also written out in spend_credits (migrations/0006); the model test holds
# the two to the same order. The oldest grant is the one whose credits count
# from earliest: a rollover (from the period boundary) before the next
# period's plan grant, whichever of the two this service wrote first.
SPENDING_ORDER = "priority, expires_at NULLS LAST, granted_at, id"


class InsufficientCredits(Exception):
    def __init__(self, balance: int) -> None:
        super().__init__(f"balance {balance}")
        self.balance = balance


class SpendNotFound(Exception):
    pass


@dataclass(frozen=True)
class NewGrant:
    key: str
    user_id: str
    credit_type: str
    source: str
    amount: int
    priority: int
    expires_at: datetime | None
    subscription_id: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    invoice_id: str | None = None
    payment_intent_id: str | None = None
    # When it counts from in the ledger (the instant of the fact); now if None.
    effective_at: datetime | None = None


@dataclass(frozen=True)
class SpendResult:
    id: str
    user_id: str
    credit_type: str
    amount: int
    reference: str
    created_at: datetime
    balance_after: int
    consumed: list[tuple[int, int]]
    # Beyond the balance, billed (only where the plan allows overage).
    overage: int = 0


@dataclass(frozen=True)
class ReversalResult:
    spend_id: str
    user_id: str
    credit_type: str
    reversed_at: datetime
    returned: int
    forfeited: int
    first_time: bool


@dataclass
class SweepResult:
    accounts: int = 0
    # credit_type -> credits
    expired: dict[str, int] = field(default_factory=dict)
    rolled_over: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Clawback:
    grant_id: int
    user_id: str
    credit_type: str
    taken: int
    already_spent: int


@dataclass(frozen=True)
class GivenBack:
    grant_id: int
    user_id: str
    credit_type: str
    given_back: int
    # Owed back, but the grant has expired since: nothing returned.
    forfeited: int


def new_spend_id() -> str:
    return f"csp_{uuid.uuid4().hex}"


async def lock_account(conn: DbConnection, user_id: str, credit_type: str) -> int:
    """Lock (creating it if needed) the account's balance row; its balance."""
    balance = await conn.fetchval(
        "SELECT balance FROM balances WHERE user_id = $1 AND credit_type = $2 FOR UPDATE",
        user_id,
        credit_type,
    )
    if balance is not None:
        return int(balance)
    await conn.execute(
        "INSERT INTO balances (user_id, credit_type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        user_id,
        credit_type,
    )
    balance = await conn.fetchval(
        "SELECT balance FROM balances WHERE user_id = $1 AND credit_type = $2 FOR UPDATE",
        user_id,
        credit_type,
    )
    return int(balance)


async def _entry(
    conn: DbConnection,
    *,
    user_id: str,
    credit_type: str,
    grant_id: int,
    kind: str,
    amount: int,
    at: datetime,
    note: str,
) -> None:
    """One ledger entry against one grant, with the note that says why."""
    await conn.execute(
        "INSERT INTO entries (user_id, credit_type, grant_id, kind, amount, at, note)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        user_id,
        credit_type,
        grant_id,
        kind,
        amount,
        at,
        note,
    )


async def _move_balance(conn: DbConnection, user_id: str, credit_type: str, delta: int) -> None:
    await conn.execute(
        "UPDATE balances SET balance = balance + $3 WHERE user_id = $1 AND credit_type = $2",
        user_id,
        credit_type,
        delta,
    )


async def grant(conn: DbConnection, new: NewGrant, now: datetime) -> int | None:
    """Record ``new`` once: its id, or None when its key was granted before."""
    await lock_account(conn, new.user_id, new.credit_type)
    at = new.effective_at or now
    grant_id = await conn.fetchval(
        """
        INSERT INTO grants (grant_key, user_id, credit_type, source, amount, remaining,
            priority, granted_at, expires_at, subscription_id, period_start, period_end,
            invoice_id, payment_intent_id)
        VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        ON CONFLICT (grant_key) DO NOTHING RETURNING id
        """,
        new.key,
        new.user_id,
        new.credit_type,
        new.source,
        new.amount,
        new.priority,
        at,
        new.expires_at,
        new.subscription_id,
        new.period_start,
        new.period_end,
        new.invoice_id,
        new.payment_intent_id,
    )
    if grant_id is None:
        return None
    await conn.execute(
        "INSERT INTO entries (user_id, credit_type, grant_id, kind, amount, at)"
        " VALUES ($1, $2, $3, 'grant', $4, $5)",
        new.user_id,
        new.credit_type,
        grant_id,
        new.amount,
        at,
    )
    await _move_balance(conn, new.user_id, new.credit_type, new.amount)
    return int(grant_id)


_SPENDABLE = f"""
SELECT id, remaining FROM grants
WHERE user_id = $1 AND credit_type = $2 AND NOT depleted AND closed_at IS NULL
  AND (expires_at IS NULL OR expires_at > $3)
ORDER BY {SPENDING_ORDER}
"""  # noqa: S608 - a constant, no values


async def spendable(conn: DbConnection, user_id: str, credit_type: str, now: datetime) -> int:
    rows = await conn.fetch(_SPENDABLE, user_id, credit_type, now)
    return sum(int(r["remaining"]) for r in rows)


async def spend(
    conn: DbConnection,
    *,
    user_id: str,
    credit_type: str,
    amount: int,
    reference: str,
    now: datetime,
    spend_id: str | None = None,
    overage_allowed: bool = False,
) -> SpendResult:
    """Take ``amount`` from the account's grants in spending order, or raise
    :class:`InsufficientCredits` having changed nothing; with
    ``overage_allowed``, take what there is and count the rest as overage.

    One call of ``spend_credits`` (migrations/0002): the account stays locked
    for one round trip, not five.
    """
    spend_id = spend_id or new_spend_id()
    row = await conn.fetchrow(
        "SELECT * FROM spend_credits($1, $2, $3, $4, $5, $6, $7)",
        user_id,
        credit_type,
        amount,
        reference,
        now,
        spend_id,
        overage_allowed,
    )
    if row is None or row["grant_ids"] is None:
        raise InsufficientCredits(int(row["available"]) if row is not None else 0)
    made = _made(
        row,
        spend_id=spend_id,
        user_id=user_id,
        credit_type=credit_type,
        amount=amount,
        reference=reference,
        now=now,
    )
    return replace(made, overage=int(row["overage"]))


def _made(
    row: Any,
    *,
    spend_id: str,
    user_id: str,
    credit_type: str,
    amount: int,
    reference: str,
    now: datetime,
) -> SpendResult:
    """The spend a ``spend_credits`` row (or its answered variant) reports."""
    return SpendResult(
        id=spend_id,
        user_id=user_id,
        credit_type=credit_type,
        amount=amount,
        reference=reference,
        created_at=now,
        balance_after=max(int(row["available"]) - amount, 0),
        consumed=list(zip(map(int, row["grant_ids"]), map(int, row["takes"]), strict=True)),
    )


class AnswerNotStored(Exception):
    """The Idempotency-Key's lease was taken over: the spend was undone."""


# SQLSTATE of spend_credits_answered when the key's lease is gone (migrations/0004).
_LEASE_LOST = "CR409"
# SQLSTATE of spend_credits_claimed when another request recorded the key
# first: the spend was undone (migrations/0009).
_CLAIMED_MEANWHILE = "CR410"


async def spend_answered(
    conn: DbConnection,
    *,
    user_id: str,
    credit_type: str,
    amount: int,
    reference: str,
    now: datetime,
    spend_id: str,
    key: tuple[str, str, uuid.UUID],
    status: int,
    answer: dict[str, Any],
) -> SpendResult | None:
    """A spend with no overage, and the Idempotency-Key's stored answer, in
    one statement (``spend_credits_answered``, migrations/0004).

    ``key`` is the claimed key's (scope, key, lease token); ``answer`` the JSON
    answer with ``balance_after`` and ``consumed`` still to fill, which the
    database fills from the spend it made, as :class:`SpendResult` holds them.
    None when the balance does not cover it: nothing was written and the key
    is still held. Raises :class:`AnswerNotStored` (the spend undone) when the
    lease was lost. Call it outside a transaction block: the statement then
    commits at once and the account's lock spans no round trip.
    """
    scope, name, lease_token = key
    try:
        row = await conn.fetchrow(
            "SELECT * FROM spend_credits_answered($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            user_id,
            credit_type,
            amount,
            reference,
            now,
            spend_id,
            scope,
            name,
            lease_token,
            status,
            answer,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _LEASE_LOST:
            raise AnswerNotStored() from exc
        raise
    if row is None or row["grant_ids"] is None:
        return None
    return _made(
        row,
        spend_id=spend_id,
        user_id=user_id,
        credit_type=credit_type,
        amount=amount,
        reference=reference,
        now=now,
    )


@dataclass(frozen=True)
class ClaimedSpend:
    """What ``spend_claimed`` did with a new key, recorded at ``since``:
    within the balance, made the spend (``spend``) and stored its answer, the
    key complete; beyond it (``spend`` None), nothing spent and the key held
    under ``lease_token``."""

    lease_token: uuid.UUID | None  # None once the key is complete
    since: datetime
    spend: SpendResult | None


async def spend_claimed(
    conn: DbConnection,
    *,
    user_id: str,
    credit_type: str,
    amount: int,
    reference: str,
    now: datetime,
    spend_id: str,
    key: tuple[str, str, str],
    lease: timedelta,
    status: int,
    answer: dict[str, Any],
) -> ClaimedSpend | None:
    """A spend with a new Idempotency-Key: the key claimed, the spend made and
    its answer stored, one statement and one commit (``spend_credits_claimed``,
    migrations/0009).

    ``key`` is the key's (scope, key, request fingerprint); ``answer`` as for
    :func:`spend_answered`. None when the key was already there, or was
    recorded by another request meanwhile: nothing was written. Otherwise the
    key is recorded, with the spend made and answered when the balance covers
    it (no overage here), else claimed for the caller's slower path. Call it
    outside a transaction block, as :func:`spend_answered`.
    """
    scope, name, request_hash = key
    try:
        row = await conn.fetchrow(
            "SELECT * FROM spend_credits_claimed"
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            user_id,
            credit_type,
            amount,
            reference,
            now,
            spend_id,
            scope,
            name,
            request_hash,
            lease,
            status,
            answer,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _CLAIMED_MEANWHILE:
            return None
        raise
    if row is None or row["claimed_at"] is None:
        return None
    made = None
    if row["grant_ids"] is not None:
        made = _made(
            row,
            spend_id=spend_id,
            user_id=user_id,
            credit_type=credit_type,
            amount=amount,
            reference=reference,
            now=now,
        )
    return ClaimedSpend(lease_token=row["claimed_token"], since=row["claimed_at"], spend=made)


async def reverse(
    conn: DbConnection, spend_id: str, *, now: datetime, owner: str | None
) -> ReversalResult:
    """Return a spend's credits to the grants they came from, once.

    ``owner``: the member the spend must belong to (None for staff); another
    member's spend is :class:`SpendNotFound`, as a missing one is. Credits whose
    grant has expired or was taken back are forfeited; those of a grant a
    dispute or a full refund holds are taken by it (:func:`give_back` returns
    them if it is won or fails).
    """
    found = await conn.fetchrow("SELECT user_id, credit_type FROM spends WHERE id = $1", spend_id)
    if found is None or (owner is not None and found["user_id"] != owner):
        raise SpendNotFound(spend_id)
    user_id, credit_type = found["user_id"], found["credit_type"]
    await lock_account(conn, user_id, credit_type)
    spent = await conn.fetchrow("SELECT * FROM spends WHERE id = $1", spend_id)
    if spent is None:  # pragma: no cover - spends are never deleted
        raise SpendNotFound(spend_id)
    if spent["reversed_at"] is not None:
        return ReversalResult(
            spend_id=spend_id,
            user_id=user_id,
            credit_type=credit_type,
            reversed_at=spent["reversed_at"],
            returned=int(spent["returned"]),
            forfeited=int(spent["forfeited"]),
            first_time=False,
        )
    parts = await conn.fetch(
        f"""
        SELECT e.grant_id, -e.amount AS amount,
               g.closed_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > $2) AS open,
               owed.cause, GREATEST(owed.target - COALESCE((
                   SELECT sum(c.taken - c.given_back) FROM clawbacks c
                   WHERE c.grant_id = g.id), 0), 0) AS owed,
               held.cause AS held_by
        FROM entries e JOIN grants g ON g.id = e.grant_id
        LEFT JOIN subscriptions s ON s.subscription_id = g.subscription_id
        -- A dispute or a full refund standing that closed the grant, and
        -- gives it back if it is won or fails: the grant is not expired.
        -- One that takes the whole before a partial refund also standing.
        LEFT JOIN LATERAL (
            SELECT c.cause FROM clawbacks c JOIN clawback_causes cc ON cc.cause = c.cause
            WHERE c.grant_id = g.id AND c.cause ~ $3 AND cc.withdrawn_at IS NULL
            ORDER BY COALESCE(cc.paid IS NULL OR cc.refunded >= cc.paid, false) DESC,
                     c.at DESC, c.cause DESC
            LIMIT 1
        ) held ON g.closed_at IS NOT NULL AND {_LIVE}
        -- A partial refund's share of the grant it could not take (spent);
        -- not a refund that failed since.
        LEFT JOIN LATERAL (
            SELECT c.cause, g.amount * cc.refunded / cc.paid AS target
            FROM clawbacks c JOIN clawback_causes cc ON cc.cause = c.cause
            WHERE c.grant_id = g.id AND cc.paid > 0 AND cc.refunded < cc.paid
              AND cc.withdrawn_at IS NULL
            ORDER BY target DESC, c.cause LIMIT 1
        ) owed ON true
        WHERE e.spend_id = $1 AND e.kind = 'spend' ORDER BY e.id
        """,  # noqa: S608 - constants, no values
        spend_id,
        now,
        _GIVEN_BACK_CAUSES,
    )
    # Closed by a dispute or a full refund standing: the credits go back to
    # the grant and that claw-back takes them at once, as it would have had
    # the spend been reversed before it. It holds them as it holds the rest:
    # given back if the dispute is won or the refund fails, kept otherwise.
    held = [
        (int(p["grant_id"]), int(p["amount"]), str(p["held_by"]))
        for p in parts
        if not p["open"] and p["held_by"] is not None
    ]
    back = [(int(p["grant_id"]), int(p["amount"])) for p in parts if p["open"]]
    back += [(grant_id, amount) for grant_id, amount, _ in held]
    # What a partial refund could not take back because it was spent, it
    # takes from the credits returned to that grant: the refunded share
    # never comes back.
    owed = [
        (int(p["grant_id"]), min(int(p["amount"]), int(p["owed"])), str(p["cause"]))
        for p in parts
        if p["open"] and p["cause"] is not None and p["owed"]
    ] + held
    returned = sum(a for _, a in back) - sum(a for _, a, _ in owed)
    forfeited = sum(int(p["amount"]) for p in parts) - returned
    if back:
        await conn.execute(
            """
            WITH back AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS t(id, amount)),
            moved AS (
                UPDATE grants g SET remaining = g.remaining + back.amount
                FROM back WHERE g.id = back.id
            )
            INSERT INTO entries (user_id, credit_type, grant_id, kind, amount, at, spend_id)
            SELECT $3, $4, back.id, 'reversal', back.amount, $5, $6 FROM back
            """,
            [b[0] for b in back],
            [b[1] for b in back],
            user_id,
            credit_type,
            now,
            spend_id,
        )
        for grant_id, taken, cause in owed:
            await _entry(
                conn,
                user_id=user_id,
                credit_type=credit_type,
                grant_id=grant_id,
                kind="clawback",
                amount=-taken,
                at=now,
                note=f"taken back: {cause}",
            )
            await conn.execute(
                "UPDATE grants SET remaining = remaining - $2 WHERE id = $1", grant_id, taken
            )
            await conn.execute(
                "UPDATE clawbacks SET taken = taken + $3,"
                " already_spent = GREATEST(already_spent - $3, 0)"
                " WHERE grant_id = $1 AND cause = $2",
                grant_id,
                cause,
                taken,
            )
        await _move_balance(conn, user_id, credit_type, returned)
    await conn.execute(
        "UPDATE spends SET reversed_at = $2, returned = $3, forfeited = $4 WHERE id = $1",
        spend_id,
        now,
        returned,
        forfeited,
    )
    return ReversalResult(
        spend_id=spend_id,
        user_id=user_id,
        credit_type=credit_type,
        reversed_at=now,
        returned=returned,
        forfeited=forfeited,
        first_time=True,
    )


# --- expiry and rollover -------------------------------------------------------------

# Grants that carry over (up to the type's cap) into the subscription's next period.
ROLLOVER_SOURCES = frozenset({"plan", "trial", "upgrade"})


async def expire_account(
    conn: DbConnection,
    user_id: str,
    credit_type: str,
    *,
    now: datetime,
    rollover_cap: int,
    result: SweepResult,
) -> None:
    """Expire what is left of the account's grants past their expiry.

    A subscription's period grants (plan, trial, upgrade) that end while the
    subscription goes on carry up to ``rollover_cap`` credits into a rollover
    grant valid for one more period of the same length; the rest expires. The
    caller holds the account's lock.
    """
    rows = await conn.fetch(
        f"""
        SELECT g.*, s.ended_at FROM grants g
        LEFT JOIN subscriptions s ON s.subscription_id = g.subscription_id
        WHERE g.user_id = $1 AND g.credit_type = $2 AND NOT g.depleted
          AND g.expires_at <= $3
        ORDER BY g.expires_at, {SPENDING_ORDER}
        """,  # noqa: S608 - a constant, no values
        user_id,
        credit_type,
        now,
    )
    # One cap per subscription period boundary, shared by its grants.
    carry_left: dict[tuple[str, datetime], int] = {}
    rollovers: dict[tuple[str, datetime], tuple[int, asyncpg.Record]] = {}
    # The invoice that paid for the period: its refund takes back what rolled over too.
    invoices: dict[tuple[str, datetime], str] = {}
    for row in rows:
        remaining = int(row["remaining"])
        # The entries count from when the credits stopped being spendable.
        at = max(row["expires_at"], row["granted_at"])
        carried = 0
        boundary = (row["subscription_id"], row["expires_at"])
        if (
            rollover_cap > 0
            and row["source"] in ROLLOVER_SOURCES
            and row["subscription_id"] is not None
            and (row["ended_at"] is None or row["ended_at"] > row["expires_at"])
        ):
            carried = min(remaining, carry_left.setdefault(boundary, rollover_cap))
            carry_left[boundary] -= carried
        entries: list[tuple[str, int, str]] = []
        if carried:
            entries.append(("rollover", -carried, "carried into the next period"))
            total, first = rollovers.get(boundary, (0, row))
            rollovers[boundary] = (total + carried, first)
            if row["invoice_id"] is not None:
                invoices.setdefault(boundary, row["invoice_id"])
        if remaining - carried:
            entries.append(("expiry", -(remaining - carried), "expired"))
            result.expired[credit_type] = result.expired.get(credit_type, 0) + remaining - carried
        for kind, amount, note in entries:
            await _entry(
                conn,
                user_id=user_id,
                credit_type=credit_type,
                grant_id=row["id"],
                kind=kind,
                amount=amount,
                at=at,
                note=note,
            )
        await conn.execute(
            "UPDATE grants SET remaining = 0, closed_at = $2 WHERE id = $1", row["id"], now
        )
        await _move_balance(conn, user_id, credit_type, -remaining)
    for (subscription_id, boundary_at), (amount, first) in rollovers.items():
        length = (first["period_end"] or boundary_at) - (first["period_start"] or boundary_at)
        await grant(
            conn,
            NewGrant(
                key=f"rollover:{first['id']}",
                user_id=user_id,
                credit_type=credit_type,
                source="rollover",
                amount=amount,
                priority=int(first["priority"]),
                expires_at=boundary_at + length,
                subscription_id=subscription_id,
                period_start=boundary_at,
                period_end=boundary_at + length,
                invoice_id=invoices.get((subscription_id, boundary_at)),
                effective_at=boundary_at,
            ),
            now,
        )
        result.rolled_over[credit_type] = result.rolled_over.get(credit_type, 0) + amount


async def end_rollovers(
    conn: DbConnection, user_id: str, subscription_id: str, ended_at: datetime, *, now: datetime
) -> dict[str, int]:
    """Expire what is left of the subscription's rollover grants into a period
    starting at or after ``ended_at``; the credits expired, by type.

    The sweep carries a period's credits over when it has not seen the
    subscription end; its end applied afterwards (the sweep ran at the
    boundary, the cancellation came later) means nothing should have rolled
    over: those credits expire, counted from the boundary as they would have.
    What was spent of them meanwhile stays spent.

    The member's accounts are locked first: a sweep rolling one over right
    now is waited for (its rollover is then read here), and one starting
    after skips them until the end, committed with this, is known to it.
    """
    accounts = await conn.fetch(
        "SELECT credit_type FROM balances WHERE user_id = $1 ORDER BY credit_type FOR UPDATE",
        user_id,
    )
    expired: dict[str, int] = {}
    for account in accounts:
        credit_type = account["credit_type"]
        rows = await conn.fetch(
            "SELECT id, remaining, period_start, granted_at FROM grants"
            " WHERE subscription_id = $1 AND source = 'rollover' AND NOT depleted"
            "   AND period_start >= $2 AND user_id = $3 AND credit_type = $4 ORDER BY id",
            subscription_id,
            ended_at,
            user_id,
            credit_type,
        )
        for row in rows:
            remaining = int(row["remaining"])
            await _entry(
                conn,
                user_id=user_id,
                credit_type=credit_type,
                grant_id=row["id"],
                kind="expiry",
                amount=-remaining,
                at=max(row["period_start"], row["granted_at"]),
                note="expired: the subscription ended",
            )
            await conn.execute(
                "UPDATE grants SET remaining = 0, closed_at = $2 WHERE id = $1", row["id"], now
            )
            await _move_balance(conn, user_id, credit_type, -remaining)
            expired[credit_type] = expired.get(credit_type, 0) + remaining
    return expired


async def accounts_to_sweep(conn: DbConnection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Lock up to ``limit`` accounts holding expired credits, skipping those
    another replica (or a spend) holds: replicas share the sweep, none waits."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT b.user_id, b.credit_type FROM balances b
        WHERE EXISTS (
            SELECT 1 FROM grants g
            WHERE g.user_id = b.user_id AND g.credit_type = b.credit_type
              AND NOT g.depleted AND g.expires_at <= $1
        )
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    return rows


# --- claw-back ---------------------------------------------------------------------------


async def _lock_accounts_of(conn: DbConnection, grant_ids: Sequence[int]) -> None:
    """Lock the accounts ``grant_ids`` belong to, in one order (no deadlock)."""
    accounts = await conn.fetch(
        "SELECT DISTINCT user_id, credit_type FROM grants WHERE id = ANY($1::bigint[])"
        " ORDER BY user_id, credit_type",
        list(grant_ids),
    )
    for account in accounts:
        await lock_account(conn, account["user_id"], account["credit_type"])


async def _lock_grants(conn: DbConnection, grant_ids: Sequence[int]) -> list[asyncpg.Record]:
    """Lock the accounts of ``grant_ids`` (in one order) and read the grants,
    each with what was spent of it and what claw-backs took, in the order of
    ``grant_ids``."""
    if not grant_ids:
        return []
    await _lock_accounts_of(conn, grant_ids)
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT g.*, COALESCE((
            SELECT -sum(e.amount) FROM entries e
            WHERE e.grant_id = g.id AND e.kind IN ('spend', 'reversal')
        ), 0) AS spent,
        COALESCE((SELECT sum(c.taken - c.given_back) FROM clawbacks c
                  WHERE c.grant_id = g.id), 0) AS taken
        FROM grants g WHERE g.id = ANY($1::bigint[]) ORDER BY array_position($1::bigint[], g.id)
        """,
        list(grant_ids),
    )
    return rows


async def _take_once(
    conn: DbConnection,
    row: asyncpg.Record,
    cause: str,
    *,
    taken: int,
    close: bool,
    note: str,
    now: datetime,
) -> Clawback | None:
    """Record ``cause``'s claw-back of the grant ``row`` and take ``taken`` out
    of it; None, taking nothing, when ``cause`` took from this grant before."""
    recorded = await conn.fetchval(
        "INSERT INTO clawbacks (grant_id, cause, taken, already_spent, at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
        row["id"],
        cause,
        taken,
        int(row["spent"]),
        now,
    )
    if not recorded:
        return None
    await _take(conn, row, taken=taken, close=close, note=note, now=now)
    return Clawback(
        grant_id=int(row["id"]),
        user_id=row["user_id"],
        credit_type=row["credit_type"],
        taken=taken,
        already_spent=int(row["spent"]),
    )


async def _take(
    conn: DbConnection, row: asyncpg.Record, *, taken: int, close: bool, note: str, now: datetime
) -> None:
    """``taken`` out of the grant ``row`` (its claw-back already recorded)."""
    if taken:
        await _entry(
            conn,
            user_id=row["user_id"],
            credit_type=row["credit_type"],
            grant_id=row["id"],
            kind="clawback",
            amount=-taken,
            at=now,
            note=note,
        )
        await _move_balance(conn, row["user_id"], row["credit_type"], -taken)
    await conn.execute(
        "UPDATE grants SET remaining = remaining - $3,"
        " closed_at = CASE WHEN $4 THEN COALESCE(closed_at, $2) ELSE closed_at END"
        " WHERE id = $1",
        row["id"],
        now,
        taken,
        close,
    )


async def take_back(
    conn: DbConnection,
    *,
    grant_ids: Sequence[int],
    amount: int,
    cause: str,
    note: str,
    now: datetime,
) -> list[Clawback]:
    """Take ``amount`` back from ``grant_ids``, in that order, as far as it is
    unspent; report what was already spent. For grants that gave more than
    was due (the rest stays theirs, and spendable): unlike :func:`clawback`,
    no grant is closed.

    Once per grant and cause, like a claw-back: a grant a first call took from
    is not taken from again under the same cause. Never drives anything
    negative: what was spent stays spent.
    """
    if amount <= 0:
        return []
    done: list[Clawback] = []
    left = amount
    for row in await _lock_grants(conn, grant_ids):
        if left <= 0:
            break
        taken = min(left, int(row["remaining"]))
        made = await _take_once(conn, row, cause, taken=taken, close=False, note=note, now=now)
        if made is not None:
            left -= taken
            done.append(made)
    return done


async def clawback(
    conn: DbConnection,
    *,
    grant_ids: Sequence[int],
    cause: str,
    note: str,
    now: datetime,
    share: tuple[int, int] | None = None,
) -> list[Clawback]:
    """Take back what is unspent of ``grant_ids``; report what was already spent.

    ``share``: (refunded, paid) of a partial refund, refunded being all the
    payment's refunds standing (none failed). Each grant then gives back up to
    that share of its amount (rounded down), less what the payment's
    claw-backs hold of it already, so partial refunds adding up to the whole
    take all that a full one would; the grant stays spendable for the rest.
    None: the whole payment, everything unspent, and the grant is closed.

    Once per grant and cause. Never drives anything negative: what was spent
    stays spent and is reported.
    """
    rows = await _lock_grants(conn, sorted(grant_ids))
    done: list[Clawback] = []
    for row in rows:
        taken, whole = int(row["remaining"]), True
        if share is not None and share[0] < share[1]:
            refunded, paid = share
            whole = False
            target = int(row["amount"]) * max(refunded, 0) // paid
            taken = min(taken, max(target - int(row["taken"]), 0))
        made = await _take_once(conn, row, cause, taken=taken, close=whole, note=note, now=now)
        if made is not None:
            done.append(made)
    return done


# The claw-backs a withdrawn cause can give back: refunds' and disputes'. A
# trial's take-back (credits granted as paid before the trial was known) is
# owed to no payment and stays taken whatever happens to one.
_GIVEN_BACK_CAUSES = r"^(refund|dispute):"

# A grant (``g``, its subscription ``s``) credits can still go back to at
# ``$2``: not expired, and not a rollover into a period after its
# subscription ended. A grant closed, yet live, was closed by a claw-back.
_LIVE = (
    "(g.expires_at IS NULL OR g.expires_at > $2)"
    " AND NOT COALESCE(g.source = 'rollover' AND s.ended_at <= g.period_start, false)"
)


async def give_back(
    conn: DbConnection,
    *,
    grant_ids: Sequence[int],
    cause: str,
    note: str,
    now: datetime,
    keep_all: bool,
    share: tuple[int, int] | None,
) -> list[GivenBack]:
    """Give back to ``grant_ids`` what the claw-backs hold of them beyond what
    the causes still standing take, ``cause`` having just been withdrawn (a
    dispute won, a refund failed).

    What a grant keeps taken: all it holds (``keep_all``: an open or lost
    dispute, or refunds adding up to the whole payment); else up to ``share``
    (refunded, paid) of its amount, the partial refunds still standing; else
    nothing. So the member ends as if ``cause`` had never been: a later
    partial refund whose share counted the failed one gives that part back
    too. Credits owed to a grant that has expired since (or to a rollover
    into a period after its subscription ended) are forfeited, as a spend's
    reversal forfeits them; a grant given back to is spendable again.

    The caller withdraws ``cause`` once, so this runs once per cause.
    """
    if not grant_ids:
        return []
    await _lock_accounts_of(conn, grant_ids)
    rows = await conn.fetch(
        f"""
        SELECT g.id, g.user_id, g.credit_type, g.amount,
        COALESCE((SELECT sum(c.taken - c.given_back) FROM clawbacks c
                  WHERE c.grant_id = g.id AND c.cause ~ $3), 0) AS held,
        {_LIVE} AS live
        FROM grants g LEFT JOIN subscriptions s ON s.subscription_id = g.subscription_id
        WHERE g.id = ANY($1::bigint[]) ORDER BY g.id
        """,  # noqa: S608 - constants, no values
        list(grant_ids),
        now,
        _GIVEN_BACK_CAUSES,
    )
    done: list[GivenBack] = []
    for row in rows:
        held = int(row["held"])
        keep = 0
        if keep_all:
            keep = held
        elif share is not None:
            refunded, paid = share
            keep = min(held, int(row["amount"]) * max(refunded, 0) // paid)
        back = held - keep
        if row["live"] and not keep_all:
            # Closed by a claw-back of the whole (the live check rules out
            # the sweep and a subscription's end): open again, as nothing
            # standing takes the whole of it; so too when it took nothing,
            # all being spent, and a spend reversed since or later returns
            # to it.
            await conn.execute("UPDATE grants SET closed_at = NULL WHERE id = $1", row["id"])
        if back <= 0:
            continue
        if not row["live"]:
            done.append(
                GivenBack(
                    grant_id=int(row["id"]),
                    user_id=row["user_id"],
                    credit_type=row["credit_type"],
                    given_back=0,
                    forfeited=back,
                )
            )
            continue
        await _entry(
            conn,
            user_id=row["user_id"],
            credit_type=row["credit_type"],
            grant_id=row["id"],
            kind="restoration",
            amount=back,
            at=now,
            note=note,
        )
        await conn.execute(
            "UPDATE grants SET remaining = remaining + $2 WHERE id = $1", row["id"], back
        )
        await _move_balance(conn, row["user_id"], row["credit_type"], back)
        await _attribute(conn, int(row["id"]), cause, back)
        done.append(
            GivenBack(
                grant_id=int(row["id"]),
                user_id=row["user_id"],
                credit_type=row["credit_type"],
                given_back=back,
                forfeited=0,
            )
        )
    return done


async def _attribute(conn: DbConnection, grant_id: int, cause: str, back: int) -> None:
    """Book ``back`` against the grant's claw-backs: the withdrawn cause's first,
    then other withdrawn ones, then the newest standing refunds' (whose share
    counted the withdrawn refund)."""
    holdings = await conn.fetch(
        """
        SELECT c.cause, c.taken - c.given_back AS held FROM clawbacks c
        LEFT JOIN clawback_causes cc ON cc.cause = c.cause
        WHERE c.grant_id = $1 AND c.taken > c.given_back AND c.cause ~ $3
        ORDER BY c.cause = $2 DESC, cc.withdrawn_at IS NOT NULL DESC, c.at DESC, c.cause DESC
        """,
        grant_id,
        cause,
        _GIVEN_BACK_CAUSES,
    )
    for holding in holdings:
        part = min(back, int(holding["held"]))
        if part <= 0:
            break
        await conn.execute(
            "UPDATE clawbacks SET given_back = given_back + $3 WHERE grant_id = $1 AND cause = $2",
            grant_id,
            holding["cause"],
            part,
        )
        back -= part


# --- reading ---------------------------------------------------------------------------


async def balances_at(conn: DbConnection, user_id: str, at: datetime) -> dict[str, int]:
    """Balances per type at ``at``: the sum of every entry that took effect by then."""
    rows = await conn.fetch(
        "SELECT credit_type, sum(amount) AS balance FROM entries"
        " WHERE user_id = $1 AND at <= $2 GROUP BY credit_type ORDER BY credit_type",
        user_id,
        at,
    )
    return {r["credit_type"]: int(r["balance"]) for r in rows}


async def spendable_by_expiry(
    conn: DbConnection, user_id: str, now: datetime
) -> dict[str, list[tuple[int, datetime | None]]]:
    """What each type holds, by expiry (soonest first, never-expiring last)."""
    rows = await conn.fetch(
        """
        SELECT credit_type, expires_at, sum(remaining) AS amount FROM grants
        WHERE user_id = $1 AND NOT depleted AND closed_at IS NULL
          AND (expires_at IS NULL OR expires_at > $2)
        GROUP BY credit_type, expires_at
        ORDER BY credit_type, expires_at NULLS LAST
        """,
        user_id,
        now,
    )
    found: dict[str, list[tuple[int, datetime | None]]] = {}
    for r in rows:
        found.setdefault(r["credit_type"], []).append((int(r["amount"]), r["expires_at"]))
    return found


async def check_account(conn: DbConnection, user_id: str, credit_type: str) -> dict[str, Any]:
    """The three sums that must agree (for tests, the benchmark and operators)."""
    row = await conn.fetchrow(
        """
        SELECT
          (SELECT balance FROM balances WHERE user_id = $1 AND credit_type = $2) AS balance,
          (SELECT COALESCE(sum(amount), 0) FROM entries
             WHERE user_id = $1 AND credit_type = $2) AS entries,
          (SELECT COALESCE(sum(remaining), 0) FROM grants
             WHERE user_id = $1 AND credit_type = $2) AS remaining
        """,
        user_id,
        credit_type,
    )
    return dict(row) if row is not None else {}
