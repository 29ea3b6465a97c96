"""One Stripe customer per user id, however many first requests race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.subscriptions import customers
from services.subscriptions.app import MIGRATIONS, SCHEMA
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from shared.stripe_calls import StripeCalls
from shared.stripe_client import StripeSettings
from tests.support import env
from tests.support.sandbox_process import SandboxProcess
from tests.support.stack import reset_state


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool[Any]]:
    await reset_state()
    await migrate_database(env.DATABASE_URL, SCHEMA, MIGRATIONS, shared=SHARED_MIGRATIONS)
    created = await asyncpg.create_pool(
        env.DATABASE_URL, min_size=1, max_size=20, server_settings={"search_path": SCHEMA}
    )
    assert created is not None
    yield created
    await created.close()


@pytest.fixture
async def calls(sandbox: SandboxProcess) -> AsyncIterator[StripeCalls]:
    policy = StripeCalls(StripeSettings(stripe_api_base=sandbox.url))
    yield policy
    await policy.close()


async def test_twenty_concurrent_first_requests_make_one_customer(
    pool: asyncpg.Pool[Any], calls: StripeCalls, sandbox: SandboxProcess
) -> None:
    found = await asyncio.gather(
        *(customers.ensure(pool, calls, "user_42", "ada@example.com") for _ in range(20))
    )

    assert len({c.stripe_customer_id for c in found}) == 1
    listed = await calls.call("list", lambda c: c.v1.customers.list_async({"limit": 100}))
    mine = [c for c in listed.data if c.metadata.to_dict().get("user_id") == "user_42"]
    assert [c.id for c in mine] == [found[0].stripe_customer_id]
    assert mine[0].email == "ada@example.com"
    assert await pool.fetchval("SELECT count(*) FROM customers") == 1


async def test_racing_inserts_of_one_customer_yield_to_the_first(
    pool: asyncpg.Pool[Any],
) -> None:
    # The racing first requests all store the same (user, customer) pair; the
    # window is a few microseconds, so it is opened many times, 8 racers each.
    for n in range(150):
        stored = await asyncio.gather(
            *(
                customers.record(pool, f"user_race_{n}", f"cus_race_{n}", None, None)
                for _ in range(8)
            )
        )
        assert {c.stripe_customer_id for c in stored} == {f"cus_race_{n}"}
    assert await pool.fetchval("SELECT count(*) FROM customers") == 150


async def test_a_known_user_is_answered_from_the_row(
    pool: asyncpg.Pool[Any], calls: StripeCalls, sandbox: SandboxProcess
) -> None:
    first = await customers.ensure(pool, calls, "user_7", None)
    creates_before = len(await sandbox.requests("/v1/customers", method="POST"))

    again = await customers.ensure(pool, calls, "user_7", None)

    assert again == first
    assert len(await sandbox.requests("/v1/customers", method="POST")) == creates_before
    assert await customers.find(pool, "user_unknown") is None
