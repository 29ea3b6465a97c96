"""The webhooks service: the ledger of every Stripe event, replay and dead letters."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.webhooks.api import SETTINGS, add_routes
from services.webhooks.ledger import ledger_queue, store_event
from services.webhooks.settings import WebhooksSettings
from shared import runtime
from shared.broker.consumer import ANY_TYPE, Consumer

SCHEMA = "webhooks"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: WebhooksSettings) -> web.Application:
    app = runtime.base_app(settings)
    app[SETTINGS] = settings

    def build_consumers(app: web.Application) -> list[Consumer]:
        return [
            Consumer(
                queue=ledger_queue(settings.retry_delays_ms),
                pool=app[runtime.POOL],
                publisher=app[runtime.PUBLISHER],
                handlers={ANY_TYPE: store_event},
                prefetch=settings.consumer_prefetch,
            )
        ]

    app.cleanup_ctx.extend(
        [
            runtime.postgres(settings, SCHEMA, MIGRATIONS),
            runtime.broker(settings, "webhooks"),
            runtime.consumers(build_consumers),
        ]
    )
    runtime.add_standard_routes(app)
    add_routes(app)
    return app
