"""Numbered SQL migrations, one folder per service.

Files are ``services/<svc>/migrations/NNNN_name.sql``; each runs once, in its
own transaction, and is recorded in ``<schema>.schema_migrations`` with a
checksum. Replicas starting at the same time serialise on a Postgres advisory
lock keyed by the schema, so exactly one applies each file and the others find
it done. A replica waits for that lock as long as it takes (a long index build
holds it for minutes), saying so in its log, rather than time out and restart
into the same wait. A file changed after it was applied is refused loudly:
silently diverging schemas are worse than a failed start.

Migrations need a connection without statement timeouts: use
:func:`migrate_database`, which opens one, rather than a pooled connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from shared.db import DbConnection, connect_unbounded
from shared.logging import get_logger

log = get_logger(__name__)

# How often a replica waiting for the migration lock tries it again, and how
# often it says in the log that it is still waiting.
LOCK_POLL_SECONDS = 0.5
LOCK_LOG_SECONDS = 5.0

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path.name}")
        migrations.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return migrations


# Tables every service schema has because shared code uses them: the
# consumer's inbox and the API's idempotency keys. Their DDL lives once, here,
# and is applied to each schema before the service's own migrations.
SHARED_MIGRATIONS = Path(__file__).parent / "sql"


async def migrate_database(
    dsn: str, schema: str, directory: Path, *, shared: Path | None = None
) -> list[str]:
    """:func:`migrate` on a connection of its own, without statement timeouts."""
    conn = await connect_unbounded(dsn)
    try:
        return await migrate(conn, schema, directory, shared=shared)
    finally:
        await conn.close()


async def migrate(
    conn: DbConnection,
    schema: str,
    directory: Path,
    *,
    shared: Path | None = None,
) -> list[str]:
    """Apply pending migrations of ``schema``: those in ``shared`` first (tracked
    as source ``shared``), then ``directory`` (source ``service``); return the
    names applied, shared ones prefixed ``shared/``.

    ``conn`` must allow statements as long as the migrations need (see
    :func:`migrate_database`); waiting for another replica's lock takes no
    long statement.
    """
    if not _SCHEMA.match(schema):
        raise MigrationError(f"invalid schema name: {schema!r}")
    sources = [("shared", load_migrations(shared))] if shared is not None else []
    sources.append(("service", load_migrations(directory)))
    applied_now: list[str] = []
    # Session-level lock: held across the per-file transactions below.
    await _wait_for_lock(conn, schema)
    try:
        # The schema name is checked against _SCHEMA above; identifiers cannot
        # be bound as parameters. A service's own role owns its schema
        # (shared/db_roles.py) but may not create schemas: only create it
        # when it is missing (a superuser's dev or test database).
        if not await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    source text NOT NULL,
                    version integer NOT NULL,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (source, version))"""
        )
        rows = await conn.fetch(
            f"SELECT source, version, checksum FROM {schema}.schema_migrations"  # noqa: S608
        )
        done = {(r["source"], r["version"]): r["checksum"] for r in rows}
        for source, migrations in sources:
            for migration in migrations:
                label = migration.name if source == "service" else f"{source}/{migration.name}"
                checksum = done.get((source, migration.version))
                if checksum is not None:
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"{schema}: migration {label} changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {schema}")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {schema}.schema_migrations"  # noqa: S608
                        " (source, version, name, checksum) VALUES ($1, $2, $3, $4)",
                        source,
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(label)
                log.info("migration_applied", schema=schema, migration=label)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _lock_key(schema))
    return applied_now


def _lock_key(schema: str) -> str:
    return f"migrations:{schema}"


async def _wait_for_lock(conn: DbConnection, schema: str) -> None:
    """Take the schema's migration lock, however long another replica holds it.

    Polled with ``pg_try_advisory_lock`` rather than a blocking
    ``pg_advisory_lock``: no statement outlives a timeout, and the log says
    why a start is taking long.
    """
    started = time.monotonic()
    next_log = started
    while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _lock_key(schema)):
        now = time.monotonic()
        if now >= next_log:
            log.info(
                "migrations_waiting_for_lock",
                schema=schema,
                waited_seconds=round(now - started, 1),
                detail="another replica is migrating this schema",
            )
            next_log = now + LOCK_LOG_SECONDS
        await asyncio.sleep(LOCK_POLL_SECONDS)
    waited = time.monotonic() - started
    if waited >= LOCK_POLL_SECONDS:
        log.info("migrations_lock_taken", schema=schema, waited_seconds=round(waited, 1))
