"""The subscriptions service: billing state mirrored from Stripe."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.subscriptions.api import routes
from services.subscriptions.handlers import handlers, stripe_events_queue
from services.subscriptions.settings import SubscriptionsSettings
from shared import runtime
from shared.clock import Clock

SCHEMA = "subscriptions"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: SubscriptionsSettings, *, clock: Clock | None = None) -> web.Application:
    return runtime.service_app(
        settings,
        name="subscriptions",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        consumes=[(stripe_events_queue(settings.retry_delays_ms), handlers)],
        routes=routes,
        clock=clock,
    )
