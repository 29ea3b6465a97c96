"""Apply-if-newer holds when an object's first two events are handled at once.

The row that ``FOR UPDATE`` would lock does not exist yet for an object's
first events, so without a lock of its own each transaction would find no row,
both would apply, and the later commit would win, whichever is older.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from shared import mirror
from shared.broker.handlers import Context
from shared.clock import SystemClock
from shared.outbox import Outbox
from tests.support import env

SCHEMA = "mirror_race"


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    conn = await asyncpg.connect(env.DATABASE_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await conn.execute(
        f"""CREATE TABLE {SCHEMA}.things (
            stripe_id text PRIMARY KEY, state text NOT NULL,
            version_created timestamptz NOT NULL, version_progress integer[] NOT NULL,
            version_digest text NOT NULL)"""
    )
    yield env.DATABASE_URL
    await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    await conn.close()


async def _apply(
    dsn: str, state: str, version: mirror.Version, decided: asyncio.Event, hold: float
) -> mirror.Verdict:
    """One consumer transaction: decide, then (after ``hold``) upsert if told to."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        async with conn.transaction():
            ctx = Context(
                conn=conn,
                clock=SystemClock(),
                outbox=Outbox(conn, source="test", clock=SystemClock()),
                message_id=state,
                queue="q",
                body={},
            )
            verdict = await mirror.decide(
                ctx,
                kind="thing",
                table="things",
                stripe_id="thing_1",
                version=version,
                state_digest=mirror.digest(state),
            )
            decided.set()
            await asyncio.sleep(hold)
            if verdict is mirror.Verdict.APPLY:
                await conn.execute(
                    """INSERT INTO things VALUES ($1, $2, $3, $4, $5)
                    ON CONFLICT (stripe_id) DO UPDATE SET state = EXCLUDED.state,
                      version_created = EXCLUDED.version_created,
                      version_progress = EXCLUDED.version_progress,
                      version_digest = EXCLUDED.version_digest""",
                    "thing_1",
                    state,
                    version.created,
                    list(version.progress),
                    mirror.digest(state),
                )
        return verdict
    finally:
        await conn.close()


OLDER = mirror.Version(datetime(2026, 11, 1, 10, 0, 0, tzinfo=UTC))
NEWER = mirror.Version(datetime(2026, 11, 1, 10, 0, 2, tzinfo=UTC))


@pytest.mark.parametrize(
    ("first", "second"),
    [(("incomplete", OLDER), ("active", NEWER)), (("active", NEWER), ("incomplete", OLDER))],
)
async def test_the_newest_of_two_concurrent_first_events_wins(
    dsn: str, first: tuple[str, mirror.Version], second: tuple[str, mirror.Version]
) -> None:
    first_decided, second_decided = asyncio.Event(), asyncio.Event()
    # The first transaction decides and holds its decision open while the
    # second decides: the second must wait for it, not decide on no row.
    one = asyncio.create_task(_apply(dsn, *first, first_decided, hold=0.5))
    await first_decided.wait()
    two = asyncio.create_task(_apply(dsn, *second, second_decided, hold=0.0))
    await asyncio.gather(one, two)

    conn = await asyncpg.connect(dsn)
    try:
        state = await conn.fetchval(
            f"SELECT state FROM {SCHEMA}.things WHERE stripe_id = 'thing_1'"  # noqa: S608
        )
    finally:
        await conn.close()
    assert state == "active"
