"""Make Postgres refuse one kind of write, the way a failing database would.

A trigger that raises stands for a database that fails at that statement
(a lost connection, a full disk, a constraint): the statement errors, its
transaction rolls back, and whatever the service did before it stands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


@asynccontextmanager
async def refusing(db: asyncpg.Connection, table: str, operation: str) -> AsyncIterator[None]:
    """While inside, every ``operation`` (INSERT, UPDATE, ...) on ``table`` fails."""
    await db.execute(
        "CREATE OR REPLACE FUNCTION public.test_refuse_write() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'test: write refused'; END $$"
    )
    await db.execute(
        f"CREATE TRIGGER test_refuse_write BEFORE {operation} ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION public.test_refuse_write()"
    )
    try:
        yield
    finally:
        await db.execute(f"DROP TRIGGER IF EXISTS test_refuse_write ON {table}")
