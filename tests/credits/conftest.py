"""The product running against a clock the test moves, and a way to talk to credits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.credits import expiry
from services.credits.ledger import SweepResult
from shared import catalog, runtime
from shared.billing_events import (
    Member,
    PaymentRef,
    PaymentRefunded,
    PaymentSucceeded,
    Period,
    Plan,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionChanged,
    SubscriptionRenewed,
)
from shared.clock import SettableClock
from tests.support import billing_events as be
from tests.support.gateway_client import admin_headers
from tests.support.stack import Stack, start_stack

START = datetime(2026, 3, 1, tzinfo=UTC)
MONTH = timedelta(days=30)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(START + timedelta(hours=1))


@pytest.fixture
async def credits_stack(clean_state: None, clock: SettableClock) -> AsyncIterator[Stack]:
    # The sweep runs once at start; the tests run it when they mean to.
    running = await start_stack(clock=clock, credits={"credits_sweep_interval_seconds": 3600})
    yield running
    await running.stop()


@dataclass
class Credits:
    """A member's view of credits through the gateway, and the events that feed them."""

    http: aiohttp.ClientSession
    gateway: str
    db: asyncpg.Connection
    clock: SettableClock
    stack: Stack

    async def sweep(self) -> SweepResult:
        """One run of the expiry sweep, as the service's timer runs it."""
        app = self.stack.app("credits")
        return await expiry.sweep(app[runtime.POOL], self.clock, catalog.default())

    # --- events ---------------------------------------------------------------

    async def send(self, event_type: str, data: Any, *, event_id: str | None = None) -> str:
        body = be.envelope(event_type, data, occurred_at=self.clock.now(), event_id=event_id)
        await be.publish(body)
        await be.wait_handled(self.db, "credits", body["id"])
        return str(body["id"])

    async def activate(
        self,
        user: str,
        sub: str,
        *,
        start: datetime = START,
        plan: str = "hot_desk",
        allotments: dict[str, int] | None = None,
        trial: bool = False,
        invoice: str | None = "in_1",
        event_id: str | None = None,
    ) -> str:
        return await self.send(
            "subscription.activated",
            SubscriptionActivated(
                member=member(user),
                subscription_id=sub,
                plan=Plan(plan=plan, interval="month"),
                status="trialing" if trial else "active",
                period=Period(start=start, end=start + MONTH),
                allotments=allotments or {"meeting_room_hours": 10, "guest_passes": 2},
                invoice_id=None if trial else invoice,
            ),
            event_id=event_id,
        )

    async def renew(
        self,
        user: str,
        sub: str,
        *,
        start: datetime,
        allotments: dict[str, int] | None = None,
        invoice: str = "in_2",
        plan: str = "hot_desk",
        event_id: str | None = None,
    ) -> str:
        return await self.send(
            "subscription.renewed",
            SubscriptionRenewed(
                member=member(user),
                subscription_id=sub,
                plan=Plan(plan=plan, interval="month"),
                period=Period(start=start, end=start + MONTH),
                allotments=allotments or {"meeting_room_hours": 10, "guest_passes": 2},
                invoice_id=invoice,
                amount_paid=19900,
                currency="usd",
            ),
            event_id=event_id,
        )

    async def change(
        self,
        user: str,
        sub: str,
        *,
        previous: dict[str, int],
        current: dict[str, int],
        effective_at: datetime,
        start: datetime = START,
        previous_plan: Plan | None = None,
        current_plan: Plan | None = None,
        status: str | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.send(
            "subscription.changed",
            SubscriptionChanged(
                member=member(user),
                subscription_id=sub,
                previous=previous_plan or Plan(plan="hot_desk", interval="month"),
                current=current_plan or Plan(plan="dedicated_desk", interval="month"),
                previous_allotments=previous,
                current_allotments=current,
                effective_at=effective_at,
                period=Period(start=start, end=start + MONTH),
                status=status,
            ),
            event_id=event_id,
        )

    async def cancel(self, user: str, sub: str, *, ended_at: datetime) -> str:
        return await self.send(
            "subscription.canceled",
            SubscriptionCanceled(
                member=member(user),
                subscription_id=sub,
                plan=Plan(plan="hot_desk", interval="month"),
                ended_at=ended_at,
            ),
        )

    async def pay(self, user: str, products: dict[str, int], *, intent: str = "pi_1") -> str:
        return await self.send(
            "payment.succeeded",
            PaymentSucceeded(
                member=member(user),
                payment=PaymentRef(payment_id=f"pay_{intent}", payment_intent_id=intent),
                amount=20000,
                currency="usd",
                products=products,
            ),
        )

    async def refund(
        self,
        user: str,
        *,
        invoice: str | None = None,
        intent: str | None = None,
        refund_id: str = "re_1",
    ) -> str:
        return await self.send(
            "payment.refunded",
            PaymentRefunded(
                member=member(user),
                payment=PaymentRef(payment_id=None, payment_intent_id=intent, invoice_id=invoice),
                amount_refunded=19900,
                total_refunded=19900,
                amount=19900,
                currency="usd",
                full=True,
                refund_id=refund_id,
            ),
        )

    # --- API ------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        user: str,
        *,
        json: Any = None,
        key: str | None = None,
        role: str = "member",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = admin_headers(user) if role == "admin" else be.member_headers(user, role=role)
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.http.request(
            method, f"{self.gateway}{path}", json=json, headers=headers, params=params
        ) as response:
            return response.status, await response.json(content_type=None)

    async def spend(
        self,
        user: str,
        amount: int,
        *,
        credit_type: str = "meeting_room_hours",
        reference: str = "booking-1",
        key: str | None = None,
    ) -> tuple[int, Any]:
        return await self.request(
            "POST",
            "/v1/credits/spend",
            user,
            json={"credit_type": credit_type, "amount": amount, "reference": reference},
            key=key or uuid.uuid4().hex,
        )

    async def balances(self, user: str) -> dict[str, int]:
        status, body = await self.request("GET", "/v1/credits/me", user)
        assert status == 200, body
        return {b["credit_type"]: b["balance"] for b in body["balances"]}

    async def consistent(self, user: str) -> None:
        """sum(entries) = balance = sum(remaining), per type, and never negative."""
        rows = await self.db.fetch(
            """
            SELECT b.credit_type, b.balance,
              (SELECT COALESCE(sum(amount), 0) FROM credits.entries e
                 WHERE e.user_id = b.user_id AND e.credit_type = b.credit_type) AS entries,
              (SELECT COALESCE(sum(remaining), 0) FROM credits.grants g
                 WHERE g.user_id = b.user_id AND g.credit_type = b.credit_type) AS remaining
            FROM credits.balances b WHERE b.user_id = $1
            """,
            user,
        )
        for row in rows:
            assert row["balance"] == row["entries"] == row["remaining"] >= 0, dict(row)


def member(user: str) -> Member:
    return Member(user_id=user, customer_id=f"cus_{user}")


@pytest.fixture
async def credits(
    credits_stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Connection, clock: SettableClock
) -> Credits:
    return Credits(
        http=http, gateway=credits_stack.gateway, db=db, clock=clock, stack=credits_stack
    )
