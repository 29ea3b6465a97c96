"""Each service connects as its own Postgres role that owns its schema and can
reach nothing else (shared/db_roles.py); the services run on those roles."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from shared.db_roles import SERVICE_SCHEMAS, ServiceRole, provision, provision_all
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from tests.support import env
from tests.support import stripe_objects as so
from tests.support.db_roles import provision_test_roles
from tests.support.gateway_client import post_event
from tests.support.stack import start_stack
from tests.support.waiting import eventually


@pytest.fixture
async def roles(clean_state: None) -> dict[str, str]:
    urls = await provision_test_roles()
    for service, url in urls.items():
        app = importlib.import_module(f"services.{service}.app")
        # The service migrates as its own role: it owns its schema.
        await migrate_database(url, app.SCHEMA, app.MIGRATIONS, shared=SHARED_MIGRATIONS)
    return urls


@pytest.fixture
async def as_credits(roles: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(roles["credits"])
    yield conn
    await conn.close()


def test_every_service_with_a_schema_gets_a_role() -> None:
    schemas = {}
    for path in (env.ROOT / "services").glob("*/app.py"):
        app = importlib.import_module(f"services.{path.parent.name}.app")
        if hasattr(app, "SCHEMA"):
            schemas[path.parent.name] = app.SCHEMA
    # Each schema is named after its service, and each has a role.
    assert schemas == {service: service for service in SERVICE_SCHEMAS}


async def test_a_service_role_cannot_read_another_services_schema(
    roles: dict[str, str], db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO webhooks.events (id, type, livemode, created_at, payload)"
        " VALUES ('evt_secret', 'invoice.paid', false, now(), '{}')"
    )
    for service, url in roles.items():
        conn = await asyncpg.connect(url)
        try:
            # Its own tables: yes.
            assert await conn.fetchval(f"SELECT count(*) FROM {service}.schema_migrations")  # noqa: S608
            for other in SERVICE_SCHEMAS:
                if other == service:
                    continue
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(f"SELECT * FROM {other}.schema_migrations")  # noqa: S608
        finally:
            await conn.close()


async def test_the_ledger_is_out_of_reach_of_credits(as_credits: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_credits.fetch("SELECT * FROM webhooks.events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_credits.execute("DELETE FROM subscriptions.schema_migrations")


async def test_a_service_role_creates_no_schema_and_nothing_in_public(
    as_credits: asyncpg.Connection,
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_credits.execute("CREATE SCHEMA credits_shadow")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_credits.execute("CREATE TABLE public.stash (x int)")
    # Not a way around: it cannot become another role.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_credits.execute(f'SET ROLE "{ServiceRole.from_url("w", env.DATABASE_URL).role}"')


async def test_provisioning_again_changes_nothing_and_adopts_older_tables(
    roles: dict[str, str], db: asyncpg.Connection
) -> None:
    # A table the admin made in the schema (a database from before the roles).
    await db.execute("CREATE TABLE credits.legacy (id serial PRIMARY KEY)")
    spec = ServiceRole.from_url("credits", roles["credits"])
    await provision(db, spec)
    await provision(db, spec)
    owner = await db.fetchval(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'credits' AND tablename = 'legacy'"
    )
    assert owner == spec.role
    conn = await asyncpg.connect(roles["credits"])
    try:
        await conn.execute("INSERT INTO credits.legacy DEFAULT VALUES")
    finally:
        await conn.close()


async def test_a_superuser_is_never_turned_into_a_service_role() -> None:
    with pytest.raises(ValueError, match="superuser"):
        await provision_all(env.DATABASE_URL, [ServiceRole.from_url("credits", env.DATABASE_URL)])


async def test_the_services_run_on_their_own_roles(
    roles: dict[str, str], http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    stack = await start_stack(**{service: {"database_url": url} for service, url in roles.items()})
    try:
        evt = so.event("customer.subscription.created", so.subscription())
        status, answer = await post_event(http, stack.gateway, evt)
        assert status == 200, answer
        await eventually(
            lambda: db.fetchval("SELECT count(*) FROM webhooks.events WHERE id = $1", evt["id"]),
            until=lambda n: n == 1,
            what="the event in the ledger, written by the webhooks role",
        )
        async with http.get(f"{stack.apps['credits'].url}/readyz") as response:
            assert response.status == 200
    finally:
        await stack.stop()
