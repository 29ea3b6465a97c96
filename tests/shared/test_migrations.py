"""Numbered SQL migrations: applied once, in order, by exactly one of several
replicas starting together; a changed or misnamed file stops the start; a
failing file leaves nothing behind; a long file is not cut short by a
statement timeout, and a replica waits for another's lock as long as it takes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import structlog
from aiohttp import web

from shared import migrations
from shared.migrations import SHARED_MIGRATIONS, MigrationError, migrate
from shared.runtime import POOL, postgres
from shared.settings import ServiceSettings
from tests.support import env
from tests.support.waiting import eventually

FILES = {
    "0001_accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);"
    " CREATE TABLE applied (file text NOT NULL);"
    " INSERT INTO applied VALUES ('0001');",
    "0002_balances.sql": "ALTER TABLE accounts ADD COLUMN balance bigint NOT NULL DEFAULT 0;"
    " INSERT INTO applied VALUES ('0002');",
    "0010_seed.sql": "INSERT INTO accounts (id, name, balance) VALUES (1, 'house', 100);"
    " INSERT INTO applied VALUES ('0010');",
}


@pytest.fixture
async def schema(db: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"migrations_test_{uuid.uuid4().hex[:10]}"
    yield name
    await db.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def folder(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    def write(files: dict[str, str]) -> Path:
        for name, sql in files.items():
            (tmp_path / name).write_text(sql)
        return tmp_path

    return write


async def _applied(db: asyncpg.Connection, schema: str) -> list[str]:
    rows = await db.fetch(f"SELECT file FROM {schema}.applied ORDER BY file")  # noqa: S608
    return [r["file"] for r in rows]


async def _recorded(db: asyncpg.Connection, schema: str) -> list[tuple[int, str]]:
    rows = await db.fetch(
        f"SELECT version, name FROM {schema}.schema_migrations ORDER BY version"  # noqa: S608
    )
    return [(r["version"], r["name"]) for r in rows]


async def test_applies_in_order_once(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    directory = folder(FILES)

    first = await migrate(db, schema, directory)
    second = await migrate(db, schema, directory)

    # 0010 sorts after 0002 and depends on its column: order is by number.
    assert first == ["0001_accounts", "0002_balances", "0010_seed"]
    assert second == []
    assert await _applied(db, schema) == ["0001", "0002", "0010"]
    assert await _recorded(db, schema) == [
        (1, "0001_accounts"),
        (2, "0002_balances"),
        (10, "0010_seed"),
    ]
    assert await db.fetchval(f"SELECT balance FROM {schema}.accounts WHERE id = 1") == 100  # noqa: S608

    # A new file later is applied on the next start, alone.
    (directory / "0011_more.sql").write_text("INSERT INTO applied VALUES ('0011');")
    assert await migrate(db, schema, directory) == ["0011_more"]
    assert await _applied(db, schema) == ["0001", "0002", "0010", "0011"]


async def test_replicas_starting_together_apply_each_file_exactly_once(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    directory = folder(FILES)
    # A slow first file widens the window in which the replicas overlap.
    (directory / "0001_accounts.sql").write_text(
        "SELECT pg_sleep(0.3); " + FILES["0001_accounts.sql"]
    )
    replicas = [await asyncpg.connect(env.DATABASE_URL) for _ in range(5)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(migrate(conn, schema, directory) for conn in replicas)), timeout=20
        )
    finally:
        for conn in replicas:
            await conn.close()

    applied_by = sorted(name for result in results for name in result)
    assert applied_by == ["0001_accounts", "0002_balances", "0010_seed"]
    assert sum(1 for result in results if result) == 1  # one replica did all the work
    assert await _applied(db, schema) == ["0001", "0002", "0010"]
    assert len(await _recorded(db, schema)) == 3


async def test_file_changed_after_it_was_applied_is_refused(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    directory = folder(FILES)
    await migrate(db, schema, directory)
    (directory / "0002_balances.sql").write_text("ALTER TABLE accounts ADD COLUMN balance numeric;")
    (directory / "0011_more.sql").write_text("INSERT INTO applied VALUES ('0011');")

    with pytest.raises(MigrationError, match="0002_balances changed after it was applied"):
        await migrate(db, schema, directory)

    # Nothing after the refused file ran.
    assert await _applied(db, schema) == ["0001", "0002", "0010"]
    # And the lock was released: another start is not blocked behind it.
    (directory / "0002_balances.sql").write_text(FILES["0002_balances.sql"])
    assert await asyncio.wait_for(migrate(db, schema, directory), 5) == ["0011_more"]


@pytest.mark.parametrize(
    "bad_name", ["1_init.sql", "0001-init.sql", "0001_Init.sql", "0001_init.SQL.sql", "init.sql"]
)
async def test_bad_file_name_is_refused(
    db: asyncpg.Connection,
    schema: str,
    folder: Callable[[dict[str, str]], Path],
    bad_name: str,
) -> None:
    directory = folder({bad_name: "CREATE TABLE t (id int);"})

    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        await migrate(db, schema, directory)
    assert await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0


async def test_duplicate_numbers_are_refused(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    directory = folder({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"})

    with pytest.raises(MigrationError, match="duplicate migration numbers"):
        await migrate(db, schema, directory)


async def test_failing_migration_rolls_back_and_is_not_recorded(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    directory = folder(
        {
            "0001_accounts.sql": FILES["0001_accounts.sql"],
            "0002_broken.sql": "CREATE TABLE half_done (id int);"
            " INSERT INTO applied VALUES ('0002');"
            " SELECT 1 / 0;",
        }
    )

    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(db, schema, directory)

    assert await _recorded(db, schema) == [(1, "0001_accounts")]
    assert await _applied(db, schema) == ["0001"]
    assert await db.fetchval("SELECT to_regclass($1)", f"{schema}.half_done") is None

    # Fixed, it applies on the next start (the lock was released and the
    # connection is usable).
    (directory / "0002_broken.sql").write_text(
        "CREATE TABLE half_done (id int); INSERT INTO applied VALUES ('0002');"
    )
    assert await asyncio.wait_for(migrate(db, schema, directory), 5) == ["0002_broken"]
    assert await _applied(db, schema) == ["0001", "0002"]


async def test_invalid_schema_name_is_refused(
    db: asyncpg.Connection, folder: Callable[[dict[str, str]], Path]
) -> None:
    with pytest.raises(MigrationError, match="invalid schema name"):
        await migrate(db, "billing; DROP SCHEMA public", folder(FILES))


async def test_shared_tables_come_first_and_are_tracked_apart(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    # A service's 0001 and the shared 0001 are different migrations.
    directory = folder({"0001_accounts.sql": FILES["0001_accounts.sql"]})

    first = await migrate(db, schema, directory, shared=SHARED_MIGRATIONS)
    again = await migrate(db, schema, directory, shared=SHARED_MIGRATIONS)

    shared = sorted(p.stem for p in SHARED_MIGRATIONS.glob("*.sql"))
    assert shared[:2] == ["0001_inbox", "0002_idempotency_keys"]
    assert first == [*(f"shared/{name}" for name in shared), "0001_accounts"]
    assert again == []
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert {"inbox", "idempotency_keys", "accounts"} <= {t["table_name"] for t in tables}
    sources = await db.fetch(
        f"SELECT source, version FROM {schema}.schema_migrations ORDER BY source, version"  # noqa: S608
    )
    assert [(r["source"], r["version"]) for r in sources] == [
        ("service", 1),
        *(("shared", n) for n in range(1, len(shared) + 1)),
    ]


async def test_a_migration_longer_than_any_statement_timeout_applies_at_start(
    db: asyncpg.Connection, schema: str, folder: Callable[[dict[str, str]], Path]
) -> None:
    # An index build on a big table takes minutes. Here: a server-side
    # statement_timeout of 0.5 s on every session (as managed Postgres often
    # sets by default) and a pool command timeout of 0.5 s, against a longer file.
    directory = folder(
        {"0001_slow_index.sql": "SELECT pg_sleep(1.2); CREATE TABLE built (id int PRIMARY KEY);"}
    )
    settings = ServiceSettings(
        service_token="t" * 32,
        database_url=f"{env.DATABASE_URL}?statement_timeout=500",
        db_command_timeout=0.5,
    )
    app = web.Application()
    app.cleanup_ctx.append(postgres(settings, schema, directory))
    runner = web.AppRunner(app)
    await runner.setup()  # what a service's start runs
    try:
        # With the shared tables, as every service's start applies them.
        assert (1, "0001_slow_index") in await _recorded(db, schema)
        assert await db.fetchval("SELECT to_regclass($1)", f"{schema}.built") is not None
        # The pool itself keeps its bounds.
        with pytest.raises((TimeoutError, asyncpg.QueryCanceledError)):
            await app[POOL].fetchval("SELECT pg_sleep(1.2)")
    finally:
        await runner.cleanup()


async def test_a_second_replica_waits_for_the_lock_saying_so_then_finds_the_work_done(
    db: asyncpg.Connection,
    schema: str,
    folder: Callable[[dict[str, str]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(migrations, "LOCK_LOG_SECONDS", 0.5, raising=False)
    directory = folder(
        {"0001_slow.sql": "SELECT pg_sleep(1.5); CREATE TABLE built (id int PRIMARY KEY);"}
    )
    first = await asyncpg.connect(env.DATABASE_URL)
    # The second replica's connection times out any statement after 0.5 s:
    # waiting for the lock must not be one long statement.
    second = await asyncpg.connect(env.DATABASE_URL, command_timeout=0.5)
    try:
        first_run = asyncio.create_task(migrate(first, schema, directory))
        await eventually(
            lambda: db.fetchval("SELECT to_regnamespace($1) IS NOT NULL", schema),
            what="the first replica migrating",
        )
        with structlog.testing.capture_logs() as logs:
            second_applied = await asyncio.wait_for(migrate(second, schema, directory), 20)
        assert await first_run == ["0001_slow"]
    finally:
        await first.close()
        await second.close()

    assert second_applied == []
    waiting = [e for e in logs if e["event"] == "migrations_waiting_for_lock"]
    assert len(waiting) >= 2, logs  # said so at once, and again while it lasted
    assert {e["schema"] for e in waiting} == {schema}
    assert [e["event"] for e in logs][-1] == "migrations_lock_taken"
