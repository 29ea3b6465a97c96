"""Postgres access: one asyncpg pool per service, confined to its schema.

The pool sets ``search_path`` to the service's schema on every connection, so
queries name tables without a schema and a service cannot read another's
tables by accident. Row values come back as Python types; JSON columns are
decoded with orjson.

Pool queries are bounded in time (``command_timeout``); migrations are not:
they run on a connection of their own from :func:`connect_unbounded`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import orjson

from shared import counting, metrics

# What handlers receive: a pooled connection, or a bare one in scripts.
DbConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
        )


async def create_pool(
    dsn: str,
    schema: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 30.0,
    reset_sessions: bool = True,
) -> asyncpg.Pool[Any]:
    """The service's pool. ``reset_sessions=False`` skips asyncpg's reset query
    (``RESET ALL``, ``UNLISTEN *``, advisory unlocks, ``CLOSE ALL``: one round
    trip each time a connection goes back) for a service whose code leaves no
    session state behind; an open transaction is still rolled back."""
    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": schema, "timezone": "UTC"},
        # A statement stuck behind a lock must fail and be retried by the
        # consumer, not hold a connection forever.
        command_timeout=command_timeout,
        reset=None if reset_sessions else _keep_session,
    )
    return pool


@asynccontextmanager
async def transaction(pool: asyncpg.Pool[Any]) -> AsyncIterator[DbConnection]:
    """A pooled connection in a transaction. Counters bumped inside it with
    :func:`shared.counting.count` count once it has committed."""
    with counting.on_commit():
        async with pool.acquire() as conn, conn.transaction():
            yield conn


async def _keep_session(_conn: asyncpg.Connection[Any]) -> None:
    # asyncpg has already rolled back any open transaction and dropped the
    # connection's listeners by the time it calls this.
    return None


async def connect_unbounded(dsn: str) -> asyncpg.Connection[Any]:
    """A connection whose statements may run as long as they need.

    No client-side command timeout, and ``statement_timeout`` off whatever the
    role's or database's default (managed Postgres often sets one). For
    migrations: an index build on a large table takes minutes, and one failed
    half way only starts over on the next start, and fails again.
    """
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        dsn, command_timeout=None, server_settings={"statement_timeout": "0", "timezone": "UTC"}
    )
    return conn


def observe_pool(pool: asyncpg.Pool[Any], schema: str) -> None:
    """Export the pool's size and use as gauges, read at scrape time."""
    metrics.DB_POOL_CONNECTIONS.labels(schema, "open").set_function(pool.get_size)
    metrics.DB_POOL_CONNECTIONS.labels(schema, "in_use").set_function(
        lambda: pool.get_size() - pool.get_idle_size()
    )
    metrics.DB_POOL_CONNECTIONS.labels(schema, "max").set_function(pool.get_max_size)
