"""The webhooks service: the ledger of every Stripe event, replay and dead letters."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.webhooks.api import SETTINGS, add_routes
from services.webhooks.ledger import ledger_queue, store_event
from services.webhooks.settings import WebhooksSettings
from shared import runtime
from shared.broker.consumer import ANY_TYPE

SCHEMA = "webhooks"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: WebhooksSettings) -> web.Application:
    app = runtime.service_app(
        settings,
        name="webhooks",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        consumes=[(ledger_queue(settings.retry_delays_ms), {ANY_TYPE: store_event})],
    )
    app[SETTINGS] = settings
    add_routes(app)
    return app
