"""The scheduler's claim on the real database: replicas claiming at once get
disjoint cases; a lease hides a case until it ends, and a case taken over
after a lease keeps its attempt number (so its Stripe idempotency key)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.retry import cases
from services.retry.app import MIGRATIONS, SCHEMA
from shared.db import create_pool
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from tests.support import env

NOW = datetime(2026, 2, 2, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)


@pytest.fixture
async def pool(clean_state: None) -> AsyncIterator[asyncpg.Pool[Any]]:
    await migrate_database(env.DATABASE_URL, SCHEMA, MIGRATIONS, shared=SHARED_MIGRATIONS)
    created = await create_pool(env.DATABASE_URL, SCHEMA, min_size=2, max_size=4)
    yield created
    await created.close()


async def _due_cases(pool: asyncpg.Pool[Any], count: int) -> list[str]:
    ids = [f"in_claim_{n}" for n in range(count)]
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO cases (invoice_id, customer_id, amount_due, currency, next_attempt_at,"
            " opened_at, updated_at) VALUES ($1, 'cus_1', 1000, 'usd', $2, $2, $2)",
            [(i, NOW - timedelta(seconds=n)) for n, i in enumerate(ids)],
        )
    return ids


async def _claim_all(pool: asyncpg.Pool[Any], owner: str) -> list[cases.Claimed]:
    claimed: list[cases.Claimed] = []
    while True:
        async with pool.acquire() as conn:
            batch = await cases.claim(conn, NOW, owner, LEASE, 7)
        if not batch:
            return claimed
        claimed += batch
        await asyncio.sleep(0)


async def test_two_replicas_claiming_at_once_never_share_a_case(
    pool: asyncpg.Pool[Any],
) -> None:
    ids = await _due_cases(pool, 300)
    first, second = await asyncio.gather(_claim_all(pool, "a"), _claim_all(pool, "b"))

    got_a = {c.case.invoice_id for c in first}
    got_b = {c.case.invoice_id for c in second}
    assert got_a and got_b  # both worked
    assert not got_a & got_b
    assert got_a | got_b == set(ids)
    assert len(first) + len(second) == len(ids)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT invoice_id, number, replica FROM attempts")
    assert len(rows) == len(ids)
    assert {r["number"] for r in rows} == {1}
    owners = {r["invoice_id"]: r["replica"] for r in rows}
    assert all(owners[i] == "a" for i in got_a) and all(owners[i] == "b" for i in got_b)


async def test_a_lease_hides_the_case_until_it_ends_and_the_attempt_keeps_its_number(
    pool: asyncpg.Pool[Any],
) -> None:
    [invoice_id] = await _due_cases(pool, 1)
    async with pool.acquire() as conn:
        [first] = await cases.claim(conn, NOW, "a", LEASE, 10)
        assert await cases.claim(conn, NOW + LEASE - timedelta(seconds=1), "b", LEASE, 10) == []
        # "a" died without an outcome: after the lease, "b" repeats attempt 1.
        [again] = await cases.claim(conn, NOW + LEASE, "b", LEASE, 10)
        assert (first.number, again.number) == (1, 1)
        assert again.idempotency_key == first.idempotency_key == f"dunning-{invoice_id}-attempt-1"
        # The dead replica's lease is gone: it no longer holds the case.
        async with conn.transaction():
            assert not await cases.holds(conn, first, "a")
            assert await cases.holds(conn, again, "b")
        # Once an attempt is finished, the next claim is a new attempt.
        async with conn.transaction():
            await cases.record_attempt(conn, NOW, again, "failed", decline_code="generic_decline")
            await cases.reschedule(conn, invoice_id, NOW, NOW + timedelta(hours=1))
        [third] = await cases.claim(conn, NOW + timedelta(hours=1), "a", LEASE, 10)
        assert third.number == 2
