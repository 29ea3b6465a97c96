"""The ledger against a small reference model, over generated sequences of
grants, renewals, spends (several at once), reversals, cancels, time passing,
sweeps, and disputes of the renewals' invoices, won or lost, in any order
with the rest.

After every step: each grant holds what the model says (so spends took from
the grants the spending order names, and reversals gave back to them), and
what the claw-backs hold of it; the balance row, the sum of the entries and
the sum of what the grants hold agree and are never negative. Spends sent
together race on real connections; the model replays the winners in the
order the database serialised them and checks every loser really lacked the
credits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.credits import ledger
from services.credits.app import MIGRATIONS
from services.credits.handlers import build_handlers
from shared.billing_events import (
    DomainEvent,
    Member,
    PaymentDisputeClosed,
    PaymentDisputed,
    PaymentRef,
    Period,
    Plan,
    SubscriptionCanceled,
    SubscriptionRenewed,
)
from shared.broker.handlers import Context
from shared.clock import SettableClock
from shared.db import create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from shared.outbox import Outbox
from tests.support import env

SCHEMA = "credits_model"
USER, SUB, TYPE = "p1", "sub_p", "meeting_room_hours"
CAP = 5  # catalog.toml: meeting_room_hours rollover_cap
START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH = timedelta(days=30)
PLAN_LEVEL = 10


# --- the reference model ---------------------------------------------------------


@dataclass
class Lot:
    id: int
    amount: int
    remaining: int
    priority: int
    expires_at: datetime | None
    source: str
    period_start: datetime | None = None
    period_end: datetime | None = None
    closed: bool = False
    # When its credits count from: now, but a rollover from the period boundary.
    granted_at: datetime | None = None
    # The invoice that paid for it (a renewal's, and what it rolled over into).
    invoice: str | None = None
    # What a dispute took back of it (and holds until it is won).
    held: int = 0


@dataclass
class Model:
    now: datetime
    lots: list[Lot] = field(default_factory=list)
    spends: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    reversed: set[str] = field(default_factory=set)
    ended_at: datetime | None = None
    # The invoices disputed, and those whose dispute was won (before or after).
    disputed: set[str] = field(default_factory=set)
    won: set[str] = field(default_factory=set)

    def add(self, **values: Any) -> None:
        values.setdefault("granted_at", self.now)
        lot = Lot(id=len(self.lots) + 1, remaining=values["amount"], **values)
        self.lots.append(lot)
        if lot.invoice is not None and self.held_by_dispute(lot):
            # A dispute applied before its renewal takes the grant as it is made.
            self.take(lot)

    def live(self, lot: Lot) -> bool:
        return lot.expires_at is None or lot.expires_at > self.now

    def held_by_dispute(self, lot: Lot) -> bool:
        return lot.invoice in self.disputed and lot.invoice not in self.won

    def take(self, lot: Lot) -> None:
        lot.held += lot.remaining
        lot.remaining = 0
        lot.closed = True

    def dispute(self, invoice: str) -> None:
        if invoice in self.disputed:
            return
        self.disputed.add(invoice)
        if invoice in self.won:
            return  # its close came first: it takes nothing
        for lot in self.lots:
            if lot.invoice == invoice:
                self.take(lot)

    def dispute_won(self, invoice: str) -> None:
        if invoice in self.won:
            return
        self.won.add(invoice)
        if invoice not in self.disputed:
            return
        for lot in self.lots:
            if lot.invoice == invoice and self.live(lot):
                # All it holds comes back, to a grant spendable again; an
                # expired one's is forfeited.
                lot.remaining += lot.held
                lot.held = 0
                lot.closed = False

    def spendable(self) -> list[Lot]:
        open_lots = [
            lot
            for lot in self.lots
            if lot.remaining > 0
            and not lot.closed
            and (lot.expires_at is None or lot.expires_at > self.now)
        ]
        far = datetime.max.replace(tzinfo=UTC)
        return sorted(
            open_lots,
            key=lambda lot: (lot.priority, lot.expires_at or far, lot.granted_at or far, lot.id),
        )

    def balance(self) -> int:
        return sum(lot.remaining for lot in self.spendable())

    def spend(self, spend_id: str, amount: int) -> list[tuple[int, int]] | None:
        if self.balance() < amount:
            return None
        taken, left = [], amount
        for lot in self.spendable():
            take = min(left, lot.remaining)
            lot.remaining -= take
            taken.append((lot.id, take))
            left -= take
            if not left:
                break
        self.spends[spend_id] = taken
        return taken

    def reverse(self, spend_id: str) -> tuple[int, int] | None:
        if spend_id in self.reversed:
            return None
        self.reversed.add(spend_id)
        returned = forfeited = 0
        for lot_id, amount in self.spends[spend_id]:
            lot = self.lots[lot_id - 1]
            if not lot.closed and self.live(lot):
                lot.remaining += amount
                returned += amount
            else:
                if lot.closed and self.live(lot) and self.held_by_dispute(lot):
                    # The dispute takes it, as it would have had the spend
                    # been reversed before it: back if it is won.
                    lot.held += amount
                forfeited += amount
        return returned, forfeited

    def renew(self, period: int) -> None:
        start = START + period * MONTH
        if self.ended_at is not None and start >= self.ended_at:
            return
        if any(lot.period_start == start and lot.source == "plan" for lot in self.lots):
            return
        self.add(
            amount=PLAN_LEVEL,
            priority=10,
            expires_at=start + MONTH,
            source="plan",
            period_start=start,
            period_end=start + MONTH,
            invoice=f"in_{period}",
        )

    def sweep(self) -> None:
        far = datetime.max.replace(tzinfo=UTC)
        due = sorted(
            (
                lot
                for lot in self.lots
                if lot.remaining > 0 and lot.expires_at is not None and lot.expires_at <= self.now
            ),
            key=lambda lot: (lot.expires_at or far, lot.priority, lot.granted_at or far, lot.id),
        )
        carry_left: dict[datetime, int] = {}
        rollovers: dict[datetime, tuple[int, Lot]] = {}
        for lot in due:
            boundary = lot.expires_at
            assert boundary is not None
            carried = 0
            if (
                lot.source in ("plan", "rollover")
                and lot.source != "rollover"
                and (self.ended_at is None or self.ended_at > boundary)
            ):
                carried = min(lot.remaining, carry_left.setdefault(boundary, CAP))
                carry_left[boundary] -= carried
            if carried:
                total, first = rollovers.get(boundary, (0, lot))
                rollovers[boundary] = (total + carried, first)
            lot.remaining = 0
            lot.closed = True
        for boundary, (amount, first) in rollovers.items():
            assert first.period_end is not None and first.period_start is not None
            length = first.period_end - first.period_start
            self.add(
                amount=amount,
                priority=first.priority,
                expires_at=boundary + length,
                source="rollover",
                period_start=boundary,
                period_end=boundary + length,
                granted_at=boundary,
                # What a dispute of the period's invoice takes back with it.
                invoice=first.invoice,
            )


# --- the steps -------------------------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("grant"),
            st.integers(1, 8),
            st.sampled_from([5, 10, 20]),
            st.sampled_from([None, 1, 5, 40]),
        ),
        st.tuples(st.just("renew"), st.integers(0, 3)),
        st.tuples(st.just("spend"), st.lists(st.integers(1, 6), min_size=1, max_size=6)),
        st.tuples(st.just("reverse"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.sampled_from([1, 7, 20, 31])),
        st.tuples(st.just("sweep")),
        st.tuples(st.just("cancel")),
        st.tuples(st.just("dispute"), st.integers(0, 3)),
        st.tuples(st.just("dispute_closed"), st.integers(0, 3), st.booleans()),
    ),
    min_size=1,
    max_size=25,
)


@pytest.fixture(scope="module")
def migrated() -> Iterator[None]:
    async def setup() -> None:
        conn = await asyncpg.connect(env.DATABASE_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await conn.close()
        await migrate_database(env.DATABASE_URL, SCHEMA, MIGRATIONS, shared=SHARED_MIGRATIONS)

    asyncio.run(setup())
    yield

    async def teardown() -> None:
        conn = await asyncpg.connect(env.DATABASE_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await conn.close()

    asyncio.run(teardown())


HANDLERS = build_handlers()


async def _handle(pool: Any, clock: SettableClock, event_type: str, data: Any) -> None:
    registration = HANDLERS.lookup(event_type)
    assert registration is not None
    event = DomainEvent[Any](
        id=str(uuid.uuid4()),
        type=event_type,
        schema_version=1,
        source="subscriptions",
        occurred_at=clock.now(),
        data=data,
    )
    async with pool.acquire() as conn, conn.transaction():
        ctx = Context(
            conn=conn,
            clock=clock,
            outbox=Outbox(conn, source="credits", clock=clock),
            message_id=event.id,
            queue="model",
            body={},
        )
        await registration.handle(event, ctx)


async def _check(pool: Any, model: Model) -> None:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT g.id, g.remaining, COALESCE((SELECT sum(c.taken - c.given_back)"
            " FROM clawbacks c WHERE c.grant_id = g.id), 0) AS held FROM grants g ORDER BY g.id"
        )
        assert [(r["id"], r["remaining"], r["held"]) for r in rows] == [
            (lot.id, lot.remaining, lot.held) for lot in model.lots
        ]
        sums = await ledger.check_account(conn, USER, TYPE)
        if sums["balance"] is not None:
            assert sums["balance"] == sums["entries"] == sums["remaining"] >= 0, sums
        assert await ledger.spendable(conn, USER, TYPE, model.now) == model.balance()


async def _run(program: list[tuple[Any, ...]]) -> None:
    clock = SettableClock(START + timedelta(hours=1))
    model = Model(now=clock.now())
    pool = await create_pool(env.DATABASE_URL, SCHEMA, max_size=6)
    member = Member(user_id=USER, customer_id="cus_p1")
    try:
        await pool.execute(
            "TRUNCATE entries, clawbacks, clawback_causes, spends, grants, balances,"
            " subscriptions RESTART IDENTITY CASCADE"
        )
        for step in program:
            match step:
                case ("grant", amount, priority, days):
                    expires = clock.now() + timedelta(days=days) if days else None
                    async with pool.acquire() as conn, conn.transaction():
                        await ledger.grant(
                            conn,
                            ledger.NewGrant(
                                key=uuid.uuid4().hex,
                                user_id=USER,
                                credit_type=TYPE,
                                source="admin",
                                amount=amount,
                                priority=priority,
                                expires_at=expires,
                            ),
                            clock.now(),
                        )
                    model.add(amount=amount, priority=priority, expires_at=expires, source="admin")
                case ("renew", period):
                    start = START + period * MONTH
                    await _handle(
                        pool,
                        clock,
                        "subscription.renewed",
                        SubscriptionRenewed(
                            member=member,
                            subscription_id=SUB,
                            plan=Plan(plan="hot_desk", interval="month"),
                            period=Period(start=start, end=start + MONTH),
                            allotments={TYPE: PLAN_LEVEL},
                            invoice_id=f"in_{period}",
                            amount_paid=100,
                            currency="usd",
                        ),
                    )
                    model.renew(period)
                case ("cancel",):
                    await _handle(
                        pool,
                        clock,
                        "subscription.canceled",
                        SubscriptionCanceled(
                            member=member, subscription_id=SUB, plan=None, ended_at=clock.now()
                        ),
                    )
                    if model.ended_at is None:
                        model.ended_at = clock.now()
                case ("dispute", period):
                    await _handle(
                        pool,
                        clock,
                        "payment.disputed",
                        PaymentDisputed(
                            member=member,
                            payment=_invoice_payment(period),
                            dispute_id=f"dp_{period}",
                            amount=100,
                            currency="usd",
                            reason="fraudulent",
                            status="needs_response",
                        ),
                    )
                    model.dispute(f"in_{period}")
                case ("dispute_closed", period, won):
                    await _handle(
                        pool,
                        clock,
                        "payment.dispute_closed",
                        PaymentDisputeClosed(
                            member=member,
                            payment=_invoice_payment(period),
                            dispute_id=f"dp_{period}",
                            amount=100,
                            currency="usd",
                            reason="fraudulent",
                            status="won" if won else "lost",
                        ),
                    )
                    if won:
                        model.dispute_won(f"in_{period}")
                case ("spend", amounts):
                    await _spend_together(pool, clock, model, amounts)
                case ("reverse", index):
                    if not model.spends:
                        continue
                    spend_id = sorted(model.spends)[index % len(model.spends)]
                    expected = model.reverse(spend_id)
                    async with pool.acquire() as conn, conn.transaction():
                        done = await ledger.reverse(conn, spend_id, now=clock.now(), owner=USER)
                    assert done.first_time == (expected is not None)
                    if expected is not None:
                        assert (done.returned, done.forfeited) == expected
                case ("advance", days):
                    clock.advance(timedelta(days=days))
                    model.now = clock.now()
                case ("sweep",):
                    async with pool.acquire() as conn, conn.transaction():
                        accounts = await ledger.accounts_to_sweep(conn, clock.now(), 10)
                        for _ in accounts:
                            await ledger.expire_account(
                                conn,
                                USER,
                                TYPE,
                                now=clock.now(),
                                rollover_cap=CAP,
                                result=ledger.SweepResult(),
                            )
                    model.sweep()
            await _check(pool, model)
    finally:
        await pool.close()


def _invoice_payment(period: int) -> PaymentRef:
    return PaymentRef(payment_id=None, payment_intent_id=None, invoice_id=f"in_{period}")


async def _spend_together(
    pool: Any, clock: SettableClock, model: Model, amounts: list[int]
) -> None:
    async def one(amount: int) -> ledger.SpendResult | None:
        async with pool.acquire() as conn, conn.transaction():
            try:
                return await ledger.spend(
                    conn,
                    user_id=USER,
                    credit_type=TYPE,
                    amount=amount,
                    reference="model",
                    now=clock.now(),
                )
            except ledger.InsufficientCredits:
                return None

    results = await asyncio.gather(*(one(a) for a in amounts))
    won = [r for r in results if r is not None]
    lost = [a for a, r in zip(amounts, results, strict=True) if r is None]
    # The order the database serialised them in: their entries' order.
    async with pool.acquire() as conn:
        order = await conn.fetch(
            "SELECT spend_id FROM entries WHERE spend_id = ANY($1) AND kind = 'spend'"
            " GROUP BY spend_id ORDER BY min(id)",
            [r.id for r in won],
        )
    by_id = {r.id: r for r in won}
    for row in order:
        result = by_id[row["spend_id"]]
        assert model.spend(result.id, result.amount) == result.consumed
    for amount in lost:
        assert amount > model.balance()


# Sequences that must always be among those tried: a rollover over the cap,
# the order between expiries and a reversal into an expired grant, racing
# spends around a cancel.
@example(program=[("renew", 0), ("spend", [3]), ("advance", 31), ("sweep",), ("spend", [4])])
@example(
    program=[
        ("grant", 3, 10, 40),
        ("grant", 3, 10, 5),
        ("grant", 2, 10, None),
        ("grant", 1, 5, None),
        ("spend", [8]),
        ("advance", 7),
        ("reverse", 0),
        ("sweep",),
    ]
)
@example(
    program=[
        ("renew", 0),
        ("renew", 1),
        ("spend", [4, 4, 4, 4, 4, 4]),
        ("cancel",),
        ("advance", 31),
        ("sweep",),
        ("reverse", 1),
    ]
)
# A spend reversed while a dispute holds its grant, partly and wholly spent,
# then the dispute won; and the dispute won before it arrived.
@example(
    program=[
        ("renew", 0),
        ("spend", [4]),
        ("spend", [6]),
        ("dispute", 0),
        ("reverse", 0),
        ("dispute_closed", 0, True),
        ("reverse", 1),
        ("spend", [10]),
    ]
)
@example(
    program=[
        ("dispute_closed", 1, True),
        ("renew", 1),
        ("dispute", 1),
        ("spend", [3]),
        ("dispute", 0),
        ("renew", 0),
        ("advance", 31),
        ("dispute_closed", 0, True),
        ("reverse", 0),
    ]
)
@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(program=steps)
def test_the_ledger_agrees_with_the_model(migrated: None, program: list[tuple[Any, ...]]) -> None:
    asyncio.run(_run(program))


def test_the_database_refuses_a_negative_balance_whatever_the_code_does(migrated: None) -> None:
    async def attempt() -> None:
        conn = await asyncpg.connect(env.DATABASE_URL, server_settings={"search_path": SCHEMA})
        try:
            await conn.execute("INSERT INTO balances VALUES ('x', 'guest_passes', 1)")
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE balances SET balance = balance - 2 WHERE user_id = 'x'")
        finally:
            await conn.execute("DELETE FROM balances WHERE user_id = 'x'")
            await conn.close()

    asyncio.run(attempt())
