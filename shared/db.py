"""Postgres access: one asyncpg pool per service, confined to its schema.

The pool sets ``search_path`` to the service's schema on every connection, so
queries name tables without a schema and a service cannot read another's
tables by accident. Row values come back as Python types; JSON columns are
decoded with orjson. A NUL character (U+0000) in a string written to a JSON
column becomes U+FFFD (see :func:`jsonb_safe`).

Pool queries are bounded in time (``command_timeout``); migrations are not:
they run on a connection of their own from :func:`connect_unbounded`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import orjson

from shared import counting, metrics

# What handlers receive: a pooled connection, or a bare one in scripts.
DbConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"


NUL = "\x00"
# What a NUL becomes in a JSON column: the Unicode replacement character.
NUL_STANDIN = "\ufffd"


def jsonb_safe(value: Any) -> Any:
    """``value`` with every NUL in its strings and keys replaced by U+FFFD;
    ``value`` itself (the same object) when it holds none.

    Postgres ``jsonb`` refuses ``\\u0000``, and Stripe objects carry
    customer-supplied text (descriptions, metadata) that may hold one: written
    as is, such an event would fail on every try, every redrive and every
    backfill, and be dead-lettered for good.
    """
    if b"\\u0000" not in orjson.dumps(value):
        return value
    return _replace_nul(value)


def _replace_nul(value: Any) -> Any:
    # Walked with a stack, not recursion: JSON may nest deeper than Python's
    # recursion limit.
    root: list[Any] = [value]
    pending: list[tuple[Any, Any]] = [(root, 0)]
    while pending:
        parent, key = pending.pop()
        item = parent[key]
        if isinstance(item, str):
            parent[key] = item.replace(NUL, NUL_STANDIN)
        elif isinstance(item, Mapping):
            copied = {
                (k.replace(NUL, NUL_STANDIN) if isinstance(k, str) else k): v
                for k, v in item.items()
            }
            parent[key] = copied
            pending += [(copied, k) for k in copied]
        elif isinstance(item, list | tuple):
            listed = list(item)
            parent[key] = listed
            pending += [(listed, i) for i in range(len(listed))]
    return root[0]


def _encode_json(value: Any) -> str:
    encoded = orjson.dumps(value)
    # A NUL always serialises as \u0000: without that text there is none (a
    # literal backslash followed by "u0000" only costs the walk). Encoded
    # once on the common path: every JSON column written goes through here.
    if b"\\u0000" in encoded:
        encoded = orjson.dumps(_replace_nul(value))
    return encoded.decode()


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=_encode_json,
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
