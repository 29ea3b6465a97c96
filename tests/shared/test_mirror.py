"""Apply if newer (``shared/mirror.py``): the one rule every mirrored Stripe
object follows, checked on its own against a real table.

``Version`` orders by the event's ``created`` first and then by what the
object proves about its age; ``decide`` compares an incoming snapshot with
the row and never lets the random event id settle a tie: an equal version
with another state raises ``Refetch``, and the object Stripe holds now is
applied.
"""

from __future__ import annotations

import ast
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared import mirror
from shared.broker.handlers import Context, Refetch
from shared.clock import SettableClock
from shared.outbox import Outbox
from tests.support import env

_DDL = """
CREATE TABLE mirrored (
    stripe_id        text PRIMARY KEY,
    status           text NOT NULL,
    version_created  timestamptz NOT NULL,
    version_progress int[] NOT NULL,
    version_digest   text NOT NULL
)
"""


@pytest.fixture
async def conn() -> AsyncIterator[asyncpg.Connection]:
    schema = f"mirror_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(env.DATABASE_URL)
    await connection.execute(f"CREATE SCHEMA {schema}")
    await connection.execute(f"SET search_path TO {schema}")
    await connection.execute(_DDL)
    yield connection
    await connection.execute(f"DROP SCHEMA {schema} CASCADE")
    await connection.close()


def _ctx(conn: asyncpg.Connection, fetched: dict[str, Any] | None = None) -> Context:
    clock = SettableClock(datetime(2026, 1, 1, tzinfo=UTC))
    return Context(
        conn=conn,
        clock=clock,
        outbox=Outbox(conn, source="test", clock=clock),
        message_id="evt_test",
        queue="test.mirror",
        body={},
        fetched=fetched,
    )


async def _hold(conn: asyncpg.Connection, status: str, version: mirror.Version) -> None:
    await conn.execute(
        "INSERT INTO mirrored VALUES ($1, $2, $3, $4, $5)",
        "sub_1",
        status,
        version.created,
        list(version.progress),
        mirror.digest({"status": status}),
    )


async def _decide(
    conn: asyncpg.Connection,
    status: str,
    version: mirror.Version,
    fetched: dict[str, Any] | None = None,
) -> mirror.Verdict:
    async with conn.transaction():
        return await mirror.decide(
            _ctx(conn, fetched),
            kind="subscription",
            table="mirrored",
            stripe_id="sub_1",
            version=version,
            state_digest=mirror.digest({"status": status}),
        )


T = 1_790_000_000


def test_a_version_orders_by_created_first_then_by_progress() -> None:
    assert mirror.Version.of(T + 1) > mirror.Version.of(T, 99, 1)
    assert mirror.Version.of(T, 2) > mirror.Version.of(T, 1, 9)
    assert mirror.Version.of(T, 1, 1) > mirror.Version.of(T, 1, 0)
    assert mirror.Version.of(T, 1, 0) == mirror.Version.of(T, 1, 0)
    # No progress at all is the least a snapshot of that second can prove.
    assert mirror.Version.of(T) < mirror.Version.of(T, 0)
    assert mirror.Version.of(T).created == datetime.fromtimestamp(T, tz=UTC)


def test_the_digest_ignores_key_order_but_not_values() -> None:
    assert mirror.digest({"a": 1, "b": [1, 2]}) == mirror.digest({"b": [1, 2], "a": 1})
    assert mirror.digest({"status": "active"}) != mirror.digest({"status": "past_due"})


async def test_a_first_snapshot_is_applied(conn: asyncpg.Connection) -> None:
    assert await _decide(conn, "active", mirror.Version.of(T)) is mirror.Verdict.APPLY


@pytest.mark.parametrize(
    ("incoming", "verdict"),
    [
        (mirror.Version.of(T + 1, 0), mirror.Verdict.APPLY),
        (mirror.Version.of(T, 6), mirror.Verdict.APPLY),
        (mirror.Version.of(T - 1, 9), mirror.Verdict.STALE),
        (mirror.Version.of(T, 4), mirror.Verdict.STALE),
    ],
    ids=["later-second", "same-second-more-progress", "earlier-second", "less-progress"],
)
async def test_newer_applies_and_older_is_stale(
    conn: asyncpg.Connection, incoming: mirror.Version, verdict: mirror.Verdict
) -> None:
    await _hold(conn, "active", mirror.Version.of(T, 5))
    assert await _decide(conn, "past_due", incoming) is verdict


async def test_an_equal_version_with_the_same_state_is_nothing_to_do(
    conn: asyncpg.Connection,
) -> None:
    await _hold(conn, "active", mirror.Version.of(T, 5))
    assert await _decide(conn, "active", mirror.Version.of(T, 5)) is mirror.Verdict.SAME


@pytest.mark.parametrize(("held", "incoming"), [("active", "past_due"), ("past_due", "active")])
async def test_an_unsettled_tie_asks_for_stripes_object_whatever_the_order(
    conn: asyncpg.Connection, held: str, incoming: str
) -> None:
    # Both orders of one same-second pair raise: the event id never decides.
    await _hold(conn, held, mirror.Version.of(T, 5))
    with pytest.raises(Refetch) as raised:
        await _decide(conn, incoming, mirror.Version.of(T, 5))
    assert (raised.value.kind, raised.value.object_id) == ("subscription", "sub_1")


async def test_a_tie_settled_by_stripes_object_is_applied(conn: asyncpg.Connection) -> None:
    await _hold(conn, "active", mirror.Version.of(T, 5))
    fetched = {"id": "sub_1", "status": "past_due"}
    verdict = await _decide(conn, "past_due", mirror.Version.of(T, 5), fetched=fetched)
    assert verdict is mirror.Verdict.APPLY


@pytest.mark.parametrize(
    "fetched",
    [
        {"id": "cus_1", "object": "customer", "metadata": {}},
        {"id": "sub_2", "object": "subscription", "status": "past_due"},
    ],
    ids=["its-customer", "another-subscription"],
)
async def test_a_tie_is_not_settled_by_another_object_read_from_stripe(
    conn: asyncpg.Connection, fetched: dict[str, Any]
) -> None:
    # A handler that read another object (the customer, to learn whose it is)
    # runs again with that object fetched: it says nothing about which of the
    # two states of sub_1 is newer, so the held one must not be overwritten.
    await _hold(conn, "past_due", mirror.Version.of(T, 5))
    with pytest.raises(Refetch) as raised:
        await _decide(conn, "active", mirror.Version.of(T, 5), fetched=fetched)
    assert (raised.value.kind, raised.value.object_id) == ("subscription", "sub_1")


async def test_decide_locks_the_row_for_the_upsert(conn: asyncpg.Connection) -> None:
    await _hold(conn, "active", mirror.Version.of(T, 5))
    other = await asyncpg.connect(env.DATABASE_URL)
    try:
        schema = await conn.fetchval("SELECT current_schema()")
        async with conn.transaction():
            await mirror.decide(
                _ctx(conn),
                kind="subscription",
                table="mirrored",
                stripe_id="sub_1",
                version=mirror.Version.of(T + 1),
                state_digest=mirror.digest({"status": "past_due"}),
            )
            # A second consumer deciding on the same object waits for this one.
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.execute(
                    f"SELECT 1 FROM {schema}.mirrored WHERE stripe_id = 'sub_1'"  # noqa: S608
                    " FOR UPDATE NOWAIT"
                )
    finally:
        await other.close()


@pytest.mark.parametrize(
    ("table", "column"), [("mirrored; DROP TABLE x", "stripe_id"), ("mirrored", "id--")]
)
async def test_only_plain_names_reach_the_sql(
    conn: asyncpg.Connection, table: str, column: str
) -> None:
    with pytest.raises(ValueError, match="not a table and column name"):
        await mirror.decide(
            _ctx(conn),
            kind="subscription",
            table=table,
            id_column=column,
            stripe_id="sub_1",
            version=mirror.Version.of(T),
            state_digest="x",
        )


def _calls_decide(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.Attribute) and node.attr == "decide" for node in ast.walk(tree))


def test_every_versioned_write_goes_through_mirror_decide() -> None:
    # The one mechanism: code that writes a mirrored row's version decides
    # with shared/mirror.py, never with an ordering rule of its own, and no
    # SQL compares versions itself.
    services = env.ROOT / "services"
    writers = [p for p in services.glob("**/*.py") if "version_digest" in p.read_text()]
    assert writers, "the subscriptions handler keeps a mirrored version"
    for module in writers:
        assert _calls_decide(module), f"{module} writes a version without mirror.decide"
    for query in services.glob("**/*.sql"):
        text = query.read_text()
        if "migrations" in query.parts or "version_digest" not in text:
            continue
        service = query.relative_to(services).parts[0]
        assert any(_calls_decide(p) for p in (services / service).glob("**/*.py")), query
    for source in [*services.glob("**/*.py"), *services.glob("**/*.sql")]:
        text = source.read_text()
        for op in ("version_created <", "version_created >", "last_event_created <"):
            assert op not in text, f"{source} orders events itself ({op!r})"
