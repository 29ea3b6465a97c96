"""The subscriptions service: the billing state of members, from Stripe."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from aiohttp import web

from services.subscriptions import mirrored
from services.subscriptions.api import SETTINGS, routes
from services.subscriptions.handlers import stripe_events_queue, stripe_handlers
from services.subscriptions.payments import api as payments_api
from services.subscriptions.payments import stripe_events as payments_events
from services.subscriptions.revenue_gauge import revenue_gauge
from services.subscriptions.settings import SubscriptionsSettings
from shared import runtime
from shared.clock import Clock
from shared.mirrored_kinds import MirroredKinds

SCHEMA = "subscriptions"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: SubscriptionsSettings, *, clock: Clock | None = None) -> web.Application:
    handlers = stripe_handlers(grace=timedelta(days=settings.grace_period_days))
    # What the drift report compares with Stripe: one line per mirrored kind.
    mirrors = MirroredKinds()
    mirrors.add(mirrored.SUBSCRIPTION)
    app = runtime.service_app(
        settings,
        name="subscriptions",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        consumes=[
            (stripe_events_queue(settings.retry_delays_ms), handlers),
            (payments_events.payments_queue(settings.retry_delays_ms), payments_events.handlers),
        ],
        routes=routes,
        clock=clock,
        mirrors=mirrors,
    )
    app[SETTINGS] = settings
    app[payments_api.SETTINGS] = settings
    app.cleanup_ctx.append(revenue_gauge(settings.revenue_gauge_seconds))
    return app
