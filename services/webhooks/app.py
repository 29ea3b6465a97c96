"""The webhooks service: the ledger of every Stripe event, replay, dead letters
and reconciliation with Stripe's Events API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from services.webhooks.api import BACKFILLS, RECORDER, SETTINGS, STATE_RECONCILER, routes
from services.webhooks.backfill import Backfills, BackfillSchedule
from services.webhooks.dead_letter_recorder import DeadLetterRecorder
from services.webhooks.drift import Owners, StateReconciler
from services.webhooks.ledger import handlers, ledger_queue
from services.webhooks.settings import WebhooksSettings
from shared import runtime
from shared.clock import Clock

SCHEMA = "webhooks"
MIGRATIONS = Path(__file__).parent / "migrations"


def dead_letters(settings: WebhooksSettings) -> runtime.CleanupCtx:
    """The recorder taking every watched dead-letter queue into Postgres."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        recorder = DeadLetterRecorder(
            app[runtime.POOL],
            settings.dead_letter_queue_names(),
            publisher=app[runtime.PUBLISHER],
            prefetch=settings.dead_letter_prefetch,
            metrics_seconds=settings.dead_letter_metrics_seconds,
        )
        await recorder.start(app[runtime.AMQP])
        app[RECORDER] = recorder
        app[runtime.SHUTDOWN].on_begin(recorder.stop)
        yield
        await recorder.stop()

    return ctx


def reconciliation(settings: WebhooksSettings) -> runtime.CleanupCtx:
    """Backfill jobs (on request) and their schedule."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        backfills = Backfills(
            app[runtime.POOL],
            app[runtime.PUBLISHER],
            app.get(runtime.STRIPE),
            settings,
            app[runtime.CLOCK],
        )
        app[BACKFILLS] = backfills
        schedule = BackfillSchedule(app[runtime.POOL], backfills, settings)
        schedule.start()
        yield
        await schedule.stop()
        await backfills.stop()

    return ctx


def drift_reports(settings: WebhooksSettings) -> runtime.CleanupCtx:
    """Drift reports (on request), with the HTTP client to the services that
    mirror Stripe objects."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=settings.reconcile_state_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            reconciler = StateReconciler(
                app[runtime.POOL], app.get(runtime.STRIPE), Owners(session, settings), settings
            )
            app[STATE_RECONCILER] = reconciler
            yield
            await reconciler.stop()

    return ctx


def create_app(settings: WebhooksSettings, *, clock: Clock | None = None) -> web.Application:
    app = runtime.service_app(
        settings,
        name="webhooks",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        consumes=[(ledger_queue(settings.retry_delays_ms), handlers)],
        routes=routes,
        clock=clock,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend(
        [dead_letters(settings), reconciliation(settings), drift_reports(settings)]
    )
    return app
