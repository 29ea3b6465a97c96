"""``shared/broker/consumer.py``'s one classification of a failure: the
infrastructure's (waited out under the larger RetryLater bound, by the
consumer and by the dead-letter recorder) or the message's and the handler's
(the ordinary retry tiers, then the dead-letter queue). The errors are the
ones asyncpg raises against the real Postgres, where one can be provoked."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from asyncpg.exceptions import _base as asyncpg_base

from shared.broker.consumer import is_transient
from tests.support import env
from tests.support.processes import free_port


async def raised(query: str, *args: object, conn: asyncpg.Connection | None = None) -> Exception:
    own = conn is None
    conn = conn or await asyncpg.connect(env.DATABASE_URL)
    try:
        await conn.fetchval(query, *args)
    except Exception as exc:
        return exc
    finally:
        if own:
            await conn.close()
    raise AssertionError(f"{query} did not fail")


@pytest.mark.parametrize(
    ("query", "argument"),
    [
        ("SELECT $1::int4", 2**40),
        ("SELECT $1::int8", 2**70),
        ("SELECT $1::int4", "12"),
        ("SELECT $1::uuid", "not-a-uuid"),
        ("SELECT 1 / $1::int4", 0),
    ],
)
async def test_data_postgres_or_asyncpg_refuses_is_not_transient(
    query: str, argument: object
) -> None:
    assert not is_transient(await raised(query, argument))


def test_asyncpgs_client_side_data_error_is_not_transient() -> None:
    # The class asyncpg declares for input it cannot encode: an InterfaceError,
    # the class of a lost connection, and a ValueError. (asyncpg 0.32 raises
    # the SQLSTATE-22 DataError instead, which the test above covers.)
    error = asyncpg_base.DataError("invalid input for query argument $1")
    assert isinstance(error, asyncpg.InterfaceError)
    assert not is_transient(error)
    assert not is_transient(asyncpg.exceptions.UnsupportedServerFeatureError("no"))


async def test_a_closed_connection_is_transient() -> None:
    conn = await asyncpg.connect(env.DATABASE_URL)
    await conn.close()
    assert is_transient(await raised("SELECT 1", conn=conn))


async def test_a_connection_the_server_ended_is_transient() -> None:
    conn = await asyncpg.connect(env.DATABASE_URL)
    admin = await asyncpg.connect(env.DATABASE_URL)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await asyncio.sleep(0.1)
        assert is_transient(await raised("SELECT 1", conn=conn))
    finally:
        await admin.close()
        conn.terminate()


async def test_a_database_that_cannot_be_reached_is_transient() -> None:
    try:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=2)
    except Exception as exc:
        assert is_transient(exc)
    else:
        raise AssertionError("connected to a closed port")
