"""Wiring a service process: pools, broker, consumers and the HTTP server.

Resources live on the aiohttp app under typed keys and are opened and closed
by ``cleanup_ctx`` entries, in order: Postgres (with migrations), then the
broker, then Stripe, the outbox relay and housekeeping, then the consumers.
aiohttp closes them in reverse, so on SIGTERM a service first stops consuming
and lets in-flight messages finish, then relays what its outbox still holds,
then closes the broker, then the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from aiohttp.typedefs import Middleware
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from shared import audit
from shared.api.service import IdempotencySettings, ServiceRoutes
from shared.broker.consumer import Consumer
from shared.broker.handlers import Handlers
from shared.broker.publisher import Publisher
from shared.broker.topology import ConsumerQueue
from shared.clock import Clock, SystemClock
from shared.db import create_pool, observe_pool
from shared.http import idempotency
from shared.http.health import add_health_routes
from shared.http.internal_auth import require_service_token
from shared.http.middleware import observe
from shared.logging import configure_logging, get_logger
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from shared.outbox import OutboxRelay, purge_published
from shared.settings import ServiceSettings
from shared.stripe_calls import StripeCalls, fetch_object
from shared.stripe_client import StripeNotConfigured

log = get_logger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)
AMQP = web.AppKey("amqp", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
STRIPE = web.AppKey("stripe", StripeCalls)
CLOCK = web.AppKey("clock", Clock)

_GC_GEN0_THRESHOLD = 20_000

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def base_app(
    settings: ServiceSettings, *, client_max_size: int = 1024**2, internal_api: bool = True
) -> web.Application:
    """An app with JSON errors, request ids and metrics; and, for a service with
    an internal API, the service-token check on ``/internal/``."""
    middlewares: list[Middleware] = [observe]
    if internal_api:
        middlewares.append(require_service_token(settings.service_token.get_secret_value()))
    return web.Application(middlewares=middlewares, client_max_size=client_max_size)


def postgres(settings: ServiceSettings, schema: str, migrations: Path) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            # Not on a pooled connection: the pool's command timeout would
            # fail a long index build, or the wait behind another replica.
            await migrate_database(
                settings.database_url, schema, migrations, shared=SHARED_MIGRATIONS
            )
        pool = await create_pool(
            settings.database_url,
            schema,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout,
        )
        observe_pool(pool, schema)
        app[POOL] = pool
        yield
        await pool.close()

    return ctx


async def connect_broker(
    url: str, name: str, *, ssl_context: ssl.SSLContext | None = None
) -> AbstractRobustConnection:
    """Connect with jittered backoff: a service may start before the broker.

    ``ssl_context`` (``ServiceSettings.amqp_ssl_context``) is used for an
    ``amqps://`` URL, the same one the publisher uses.
    """
    retrying = AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5),
        retry=retry_if_exception_type((ConnectionError, OSError, asyncio.TimeoutError)),
        before_sleep=lambda state: log.warning(
            "broker_connect_retry",
            role="consumers",
            attempt=state.attempt_number,
            error=repr(state.outcome.exception()) if state.outcome else None,
        ),
    )
    connection: AbstractRobustConnection = await retrying(
        aio_pika.connect_robust,
        url,
        ssl_context=ssl_context,
        client_properties={"connection_name": name},
        # After a connection loss aio-pika retries at a fixed interval (5 s by
        # default); a second keeps a broker blip from stalling consumers long.
        reconnect_interval=1,
    )
    return connection


def broker(settings: ServiceSettings, name: str) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tls = settings.amqp_ssl_context()
        connection = await connect_broker(settings.amqp_url, name, ssl_context=tls)
        publisher = Publisher(settings.amqp_url, name=name, ssl_context=tls)
        await publisher.start(wait=10.0)
        app[AMQP] = connection
        app[PUBLISHER] = publisher
        yield
        await publisher.close()
        await connection.close()

    return ctx


def stripe(settings: ServiceSettings) -> CleanupCtx:
    """The service's Stripe (``shared/stripe_calls.py``), when one is configured."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            calls = StripeCalls(settings)
        except StripeNotConfigured:
            log.warning("stripe_not_configured")
            yield
            return
        app[STRIPE] = calls
        yield
        await calls.close()

    return ctx


def outbox_relay(settings: ServiceSettings, schema: str) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        relay = OutboxRelay(app[POOL], app[PUBLISHER], dsn=settings.database_url, schema=schema)
        await relay.start()
        yield
        await relay.stop()

    return ctx


def housekeeping(settings: ServiceSettings) -> CleanupCtx:
    """Periodic clean-up every replica may run: each statement is idempotent."""

    async def sweep(app: web.Application) -> None:
        while True:
            try:
                await idempotency.purge_expired(
                    app[POOL], timedelta(seconds=settings.idempotency_key_ttl_seconds)
                )
                await purge_published(app[POOL], timedelta(days=settings.outbox_retention_days))
            except Exception as exc:
                log.warning("housekeeping_failed", error=repr(exc))
            await asyncio.sleep(settings.housekeeping_interval_seconds)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep(app), name="housekeeping")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def consumers(build: Callable[[web.Application], Sequence[Consumer]]) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        started = list(build(app))
        for consumer in started:
            await consumer.start(app[AMQP])
        yield
        await asyncio.gather(*(c.stop() for c in started))

    return ctx


def service_app(
    settings: ServiceSettings,
    *,
    name: str,
    schema: str,
    migrations: Path,
    consumes: Sequence[tuple[ConsumerQueue, Handlers]] = (),
    routes: ServiceRoutes | None = None,
    clock: Clock | None = None,
) -> web.Application:
    """A service with a schema, a broker connection, Stripe, its outbox relay,
    its consumers, its API and health routes."""
    app = base_app(settings)
    app[CLOCK] = clock or SystemClock()
    app.cleanup_ctx.extend(
        [
            postgres(settings, schema, migrations),
            broker(settings, name),
            stripe(settings),
            outbox_relay(settings, schema),
            housekeeping(settings),
        ]
    )
    if consumes:

        def build(app: web.Application) -> list[Consumer]:
            calls = app.get(STRIPE)

            async def fetch(kind: str, object_id: str) -> dict[str, Any]:
                if calls is None:
                    raise StripeNotConfigured("no Stripe to settle an ordering tie with")
                return await fetch_object(calls, kind, object_id)

            return [
                Consumer(
                    queue=queue,
                    pool=app[POOL],
                    publisher=app[PUBLISHER],
                    handlers=handlers,
                    source=name,
                    prefetch=settings.consumer_prefetch,
                    clock=app[CLOCK],
                    fetch=fetch,
                )
                for queue, handlers in consumes
            ]

        app.cleanup_ctx.append(consumers(build))
    if routes is not None:
        routes.configure(
            IdempotencySettings(
                ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds),
                lease=timedelta(seconds=settings.idempotency_lease_seconds),
            )
        )
        routes.install(app, lambda: app[POOL])
    audit.add_internal_route(app, name, lambda: app[POOL])
    add_standard_routes(app)
    return app


def add_standard_routes(app: web.Application) -> None:
    """Health endpoints for a service that has a pool and a broker connection."""

    async def db_ready() -> bool:
        async with app[POOL].acquire() as conn:
            return bool(await conn.fetchval("SELECT true"))

    async def broker_ready() -> bool:
        return not app[AMQP].is_closed and app[PUBLISHER].ready

    add_health_routes(app, {"database": db_ready, "broker": broker_ready})


def run(
    app_factory: Callable[[], web.Application],
    *,
    service: str,
    settings: ServiceSettings,
    port: int,
) -> None:
    configure_logging(service, settings.log_level)
    log.info("starting", host=settings.http_host, port=port)
    app = app_factory()
    app.on_startup.append(_tune_gc)
    web.run_app(
        app,
        host=settings.http_host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=15.0,
        loop=uvloop.new_event_loop(),
    )


async def _tune_gc(_: web.Application) -> None:
    """Keep the garbage collector off the request path.

    Every webhook allocates a few hundred short-lived objects (its parsed
    JSON), so the default gen-0 threshold of 700 runs a collection every
    couple of requests, and each full collection walked every object loaded
    at start-up (aiohttp, stripe, pydantic: over 100k). Freezing what exists
    once started moves it out of the collector's sight, and a larger gen-0
    threshold collects less often. Measured on the gateway: about 15% less
    CPU per webhook and half the p99 latency.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def _migrate_only(settings: ServiceSettings, schema: str, migrations: Path) -> list[str]:
    return await migrate_database(
        settings.database_url, schema, migrations, shared=SHARED_MIGRATIONS
    )


def main(
    app_factory: Callable[[], web.Application],
    *,
    service: str,
    settings: ServiceSettings,
    port: int,
    schema: str | None = None,
    migrations: Path | None = None,
) -> None:
    """``python -m services.<name> [serve|migrate]``.

    ``migrate`` applies the service's migrations and exits: a deploy can run
    it as a job before rolling out replicas (which also migrate on start, under
    the same advisory lock, unless ``MIGRATE_ON_START=false``).
    """
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "serve":
        run(app_factory, service=service, settings=settings, port=port)
    elif command == "migrate" and schema is not None and migrations is not None:
        configure_logging(service, settings.log_level)
        applied = uvloop.run(_migrate_only(settings, schema, migrations))
        log.info("migrations_done", schema=schema, applied=applied)
    else:
        raise SystemExit(f"usage: python -m services.{service} [serve|migrate]")
