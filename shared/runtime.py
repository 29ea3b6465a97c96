"""Wiring a service process: pools, broker, consumers and the HTTP server.

Resources live on the aiohttp app under typed keys and are opened and closed
by ``cleanup_ctx`` entries, in order: Postgres (with migrations), then the
broker, then Stripe, the outbox relay and housekeeping, then the consumers.
aiohttp closes them in reverse. On SIGTERM (``shared/shutdown.py``) the
consumers stop taking messages at once, while in-flight requests and messages
drain side by side; then the consumers close, the outbox relays what it still
holds, and the broker and the pool close, every step bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
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
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared import audit
from shared.api.service import IdempotencySettings, ServiceRoutes
from shared.broker import policies
from shared.broker.consumer import Consumer
from shared.broker.consumer_group import ConsumerGroup
from shared.broker.handlers import Handlers
from shared.broker.policies import Management
from shared.broker.publisher import Publisher
from shared.broker.topology import ConsumerQueue
from shared.clock import Clock, SystemClock
from shared.db import create_pool, observe_pool
from shared.http import idempotency
from shared.http.health import add_health_routes
from shared.http.internal_auth import require_service_token
from shared.http.middleware import observe
from shared.http.server import AppRunner, ConnectionLimits
from shared.logging import configure_logging, get_logger
from shared.migrations import SHARED_MIGRATIONS, migrate_database
from shared.mirror_routes import Mirror
from shared.mirrored_kinds import MirroredKinds
from shared.outbox import OutboxRelay, purge_published
from shared.settings import ServiceSettings
from shared.shutdown import CANCEL_SECONDS, OUTBOX_FINAL_DRAIN_SECONDS, Shutdown, bounded
from shared.stripe_calls import StripeCalls, fetch_object
from shared.stripe_client import StripeNotConfigured

log = get_logger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)
AMQP = web.AppKey("amqp", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
STRIPE = web.AppKey("stripe", StripeCalls)
CLOCK = web.AppKey("clock", Clock)
CONSUMERS = web.AppKey("consumers", ConsumerGroup)
# The queues a service consumes, declared with the app: its migrations apply
# their policies.
CONSUMER_QUEUES = web.AppKey("consumer_queues", tuple[ConsumerQueue, ...])
SHUTDOWN = web.AppKey("shutdown", Shutdown)

_GC_GEN0_THRESHOLD = 20_000

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def base_app(
    settings: ServiceSettings, *, client_max_size: int = 1024**2, internal_api: bool = True
) -> web.Application:
    """An app with JSON errors, request ids and metrics, graceful shutdown
    (``shared/shutdown.py``); and, for a service with an internal API, the
    service-token check on ``/internal/``."""
    shutdown = Shutdown(settings.shutdown_drain_seconds)
    middlewares: list[Middleware] = [shutdown.middleware, observe]
    if internal_api:
        middlewares.append(require_service_token(settings.service_token.get_secret_value()))
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size)
    app[SHUTDOWN] = shutdown

    async def begin(app: web.Application) -> None:
        # Already begun at SIGTERM under run(); this covers any other runner.
        await app[SHUTDOWN].begin()

    app.on_shutdown.append(begin)
    return app


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
            reset_sessions=settings.db_reset_sessions,
        )
        observe_pool(pool, schema)
        app[POOL] = pool
        yield
        # Cancelling close() terminates the pool's connections.
        await bounded("pool_close", pool.close())

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
        # A broker that accepts the socket but never answers is retried, not awaited.
        timeout=15,
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
        await bounded("publisher_close", publisher.close())
        await bounded("broker_close", connection.close())

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
        await bounded("stripe_close", calls.close())

    return ctx


def outbox_relay(settings: ServiceSettings, schema: str) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        relay = OutboxRelay(app[POOL], app[PUBLISHER], dsn=settings.database_url, schema=schema)
        await relay.start()
        yield
        # One last drain: what committed during the shutdown goes out too.
        await bounded("outbox_relay_stop", relay.stop(), OUTBOX_FINAL_DRAIN_SECONDS + 2.0)

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


def management(settings: ServiceSettings) -> Management:
    """The broker's management API, where queue policies are applied and checked."""
    return Management.for_broker(
        settings.amqp_url, settings.amqp_management_url, ssl_context=settings.amqp_ssl_context()
    )


def consumers(
    settings: ServiceSettings, name: str, build: Callable[[web.Application], Sequence[Consumer]]
) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        group = ConsumerGroup(
            build(app),
            management(settings),
            service=name,
            apply_policies=settings.migrate_on_start,
        )
        app[CONSUMERS] = group
        # At SIGTERM, no new message; those in hand drain with the requests.
        app[SHUTDOWN].on_begin(group.stop_taking)
        await group.start(app[AMQP])
        yield
        await group.stop(grace=app[SHUTDOWN].remaining())

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
    mirrors: MirroredKinds | None = None,
) -> web.Application:
    """A service with a schema, a broker connection, Stripe, its outbox relay,
    its consumers, its API and health routes; with ``mirrors``, the routes the
    drift report reads its mirrored Stripe objects by and repairs them through
    (``shared/mirror_routes.py``)."""
    app = base_app(settings)
    app[CLOCK] = clock or SystemClock()
    app[CONSUMER_QUEUES] = tuple(queue for queue, _ in consumes)
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

        app.cleanup_ctx.append(consumers(settings, name, build))
    if routes is not None:
        routes.configure(
            IdempotencySettings(
                ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds),
                lease=timedelta(seconds=settings.idempotency_lease_seconds),
            )
        )
        routes.install(app, lambda: app[POOL])
    if mirrors is not None and len(mirrors):
        Mirror(
            mirrors,
            service=name,
            consumes=consumes,
            pool=lambda: app[POOL],
            clock=lambda: app[CLOCK],
            stripe=lambda: app.get(STRIPE),
        ).install(app)
    audit.add_internal_route(app, name, lambda: app[POOL])
    add_standard_routes(app, consumers=bool(consumes))
    return app


def add_standard_routes(app: web.Application, *, consumers: bool = False) -> None:
    """Health endpoints for a service that has a pool and a broker connection
    (and, with ``consumers``, consumers that must be taking messages)."""

    async def db_ready() -> bool:
        async with app[POOL].acquire() as conn:
            return bool(await conn.fetchval("SELECT true"))

    async def broker_ready() -> bool:
        return not app[AMQP].is_closed and app[PUBLISHER].ready

    async def consuming() -> bool:
        # False until every queue's policy is in force (see consumer_group.py).
        return app[CONSUMERS].consuming

    checks = {"database": db_ready, "broker": broker_ready}
    if consumers:
        checks["consumers"] = consuming
    add_health_routes(app, checks)


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
    uvloop.run(_serve(app, settings.http_host, port, ConnectionLimits.of(settings)))


async def _serve(app: web.Application, host: str, port: int, limits: ConnectionLimits) -> None:
    """Serve until SIGTERM or SIGINT, then stop as ``shared/shutdown.py`` says.

    Not ``web.run_app``: its shutdown stops reading every connection at once,
    so a request whose body is still arriving could never be answered. Here
    the listening socket closes first, in-flight requests drain, and only
    then does aiohttp's shutdown run (cancelling what still runs after
    ``CANCEL_SECONDS``) and close the app's resources.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = AppRunner(app, limits=limits, access_log=None, shutdown_timeout=CANCEL_SECONDS)
    shutdown = app[SHUTDOWN]
    starting = asyncio.create_task(_start(runner, host, port))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            # Stopped while starting (waiting for a migration lock, say).
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        else:
            starting.result()  # a failed start raises here, after the clean-up below
            log.info("serving", port=port)
            await stopping
        for site in list(runner.sites):
            await site.stop()  # no new connection from here on
        await shutdown.begin()
        await shutdown.requests_done()
    finally:
        stopping.cancel()
        await runner.cleanup()
        log.info("stopped")


async def _start(runner: AppRunner, host: str, port: int) -> None:
    await runner.setup()
    await web.TCPSite(runner, host, port).start()


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


async def _migrate_only(
    settings: ServiceSettings,
    schema: str,
    migrations: Path,
    queues: Sequence[ConsumerQueue],
) -> list[str]:
    applied = await migrate_database(
        settings.database_url, schema, migrations, shared=SHARED_MIGRATIONS
    )
    if queues:
        await _apply_queue_policies(settings, queues)
    return applied


async def _apply_queue_policies(settings: ServiceSettings, queues: Sequence[ConsumerQueue]) -> None:
    """The queues' policies, as part of the migrations; retried while the broker
    starts (a deploy may bring both up together), then checked."""
    api = management(settings)
    wanted = policies.all_policies(queues)
    retrying = AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
        stop=stop_after_delay(120),
        retry=retry_if_exception_type(policies.ManagementError),
        before_sleep=lambda state: log.warning(
            "queue_policies_retry",
            attempt=state.attempt_number,
            error=str(state.outcome.exception()) if state.outcome else None,
        ),
        reraise=True,
    )
    try:
        await retrying(policies.apply, api, wanted)
        problems = await policies.verify(api, wanted)
    except policies.ManagementError as exc:
        raise SystemExit(f"queue policies not applied: {exc}") from exc
    if problems:
        # Another policy of higher priority shadows ours: an operator's to settle.
        raise SystemExit(
            "queue policies not in force: "
            + "; ".join(f"{queue}: {why}" for queue, why in problems.items())
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

    ``migrate`` applies the service's migrations, and the policies of the
    queues it consumes, and exits: a deploy runs it before the service starts
    (an init container in deploy/k8s), which then runs with
    ``MIGRATE_ON_START=false`` and only checks the policies. With
    ``MIGRATE_ON_START=true`` (the default) each replica does both at start
    (the migrations under the same advisory lock).
    """
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "serve":
        run(app_factory, service=service, settings=settings, port=port)
    elif command == "migrate" and schema is not None and migrations is not None:
        configure_logging(service, settings.log_level)
        queues = app_factory().get(CONSUMER_QUEUES, ())
        applied = uvloop.run(_migrate_only(settings, schema, migrations, queues))
        log.info("migrations_done", schema=schema, applied=applied)
    else:
        raise SystemExit(f"usage: python -m services.{service} [serve|migrate]")
