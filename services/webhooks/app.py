"""The webhooks service: the ledger of every Stripe event, replay and dead letters."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.webhooks.api import SETTINGS, routes
from services.webhooks.ledger import handlers, ledger_queue
from services.webhooks.settings import WebhooksSettings
from shared import runtime
from shared.clock import Clock

SCHEMA = "webhooks"
MIGRATIONS = Path(__file__).parent / "migrations"


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
    return app
