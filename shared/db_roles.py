"""Each service connects as its own Postgres role, which owns its schema and
can reach nothing else.

Run with an admin connection (a superuser, or a role with CREATEROLE that
owns the database) before the services migrate: ``make dev`` and the tests
do it, compose runs it as the ``db-roles`` service, Kubernetes as the
``db-roles`` Job. For each service, from the user and password of its own
``DATABASE_URL``:

- the role: LOGIN with that password, no other attribute (not a superuser,
  cannot create roles, databases or schemas);
- CONNECT and TEMPORARY on the database, which PUBLIC loses;
- the service's schema, created if missing and owned by the role, with
  everything already in it (a database from before the roles existed).

Nothing is granted on another schema, and Postgres gives none by default: a
role reading another service's tables gets "permission denied". Running it
again changes nothing but the passwords (a rotation: change the password in
the service's ``DATABASE_URL`` secret, run this, restart the service).

``python -m shared.db_roles`` reads ``ADMIN_DATABASE_URL`` and the
``<SERVICE>_DATABASE_URL`` of each service to provision.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import asyncpg

from shared.logging import configure_logging, get_logger

log = get_logger(__name__)

# The services with a schema; each schema is named after its service.
SERVICE_SCHEMAS = ("webhooks", "subscriptions", "credits", "retry")

# Objects a schema may hold, by how ALTER ... OWNER names them.
_OWNED_OBJECTS = """
SELECT 'TABLE' AS kind, format('%I.%I', n.nspname, c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND pg_get_userbyid(c.relowner) <> $2
UNION ALL
-- Sequences a column owns follow their table.
SELECT 'SEQUENCE', format('%I.%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind = 'S' AND pg_get_userbyid(c.relowner) <> $2
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT 'TYPE', format('%I.%I', n.nspname, t.typname)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'r', 'c') AND pg_get_userbyid(t.typowner) <> $2
   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
UNION ALL
SELECT 'ROUTINE', p.oid::regprocedure::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = $1 AND pg_get_userbyid(p.proowner) <> $2
"""


@dataclass(frozen=True)
class ServiceRole:
    service: str
    schema: str
    role: str
    password: str | None
    database: str

    @classmethod
    def from_url(cls, service: str, url: str, schema: str | None = None) -> ServiceRole:
        parts = urlsplit(url)
        if not parts.username:
            raise ValueError(f"{service}: its DATABASE_URL names no user")
        return cls(
            service=service,
            schema=schema or service,
            role=unquote(parts.username),
            password=unquote(parts.password) if parts.password else None,
            database=parts.path.lstrip("/") or unquote(parts.username),
        )


async def _execute_formatted(conn: asyncpg.Connection, template: str, *values: str) -> None:
    """Run DDL whose identifiers and literals Postgres itself quotes (``format``
    with ``%I``/``%L``): DDL takes no bound parameters."""
    statement = await conn.fetchval("SELECT format($1, VARIADIC $2::text[])", template, values)
    await conn.execute(statement)


async def provision(conn: asyncpg.Connection, spec: ServiceRole) -> None:
    """Create or update ``spec``'s role and hand it its schema (idempotent)."""
    async with conn.transaction():
        # Serialise concurrent runs (two Jobs, a Job and make dev).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('billing:db_roles'))")
        existing = await conn.fetchrow(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1", spec.role
        )
        if existing is not None and existing["rolsuper"]:
            # A DATABASE_URL still naming the admin (postgres): taking its
            # rights away would lock the operator out.
            raise ValueError(f"{spec.service}: {spec.role} is a superuser, not a service role")
        exists = existing is not None
        verb = "ALTER" if exists else "CREATE"
        attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        if spec.password is None:
            await _execute_formatted(conn, f"{verb} ROLE %I WITH {attributes}", spec.role)
        else:
            await _execute_formatted(
                conn, f"{verb} ROLE %I WITH {attributes} PASSWORD %L", spec.role, spec.password
            )
        await _execute_formatted(conn, "REVOKE ALL ON DATABASE %I FROM PUBLIC", spec.database)
        await _execute_formatted(
            conn, "GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I", spec.database, spec.role
        )
        await _execute_formatted(
            conn, "CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I", spec.schema, spec.role
        )
        await _execute_formatted(conn, "ALTER SCHEMA %I OWNER TO %I", spec.schema, spec.role)
        for row in await conn.fetch(_OWNED_OBJECTS, spec.schema, spec.role):
            # Names come quoted from format(%I) / regprocedure above.
            await _execute_formatted(
                conn, f"ALTER {row['kind']} %s OWNER TO %I", row["name"], spec.role
            )
    log.info("db_role_provisioned", service=spec.service, role=spec.role, schema=spec.schema)


async def provision_all(admin_url: str, specs: list[ServiceRole]) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for spec in specs:
            await provision(conn, spec)
    finally:
        await conn.close()


def specs_from_environment(environ: dict[str, str]) -> list[ServiceRole]:
    return [
        ServiceRole.from_url(service, url)
        for service in SERVICE_SCHEMAS
        if (url := environ.get(f"{service.upper()}_DATABASE_URL"))
    ]


def main() -> None:
    configure_logging("db_roles", os.environ.get("LOG_LEVEL", "INFO"))
    admin_url = os.environ.get("ADMIN_DATABASE_URL")
    specs = specs_from_environment(dict(os.environ))
    if not admin_url or not specs:
        sys.exit("set ADMIN_DATABASE_URL and at least one <SERVICE>_DATABASE_URL")
    asyncio.run(provision_all(admin_url, specs))


if __name__ == "__main__":
    main()
