"""The subscriptions service: billing state mirrored from Stripe."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.subscriptions.api import add_routes
from services.subscriptions.handlers import apply_subscription_event, stripe_events_queue
from services.subscriptions.settings import SubscriptionsSettings
from shared import runtime
from shared.broker.consumer import ANY_TYPE

SCHEMA = "subscriptions"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: SubscriptionsSettings) -> web.Application:
    app = runtime.service_app(
        settings,
        name="subscriptions",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        # Every customer.subscription.* event carries a subscription snapshot.
        consumes=[
            (
                stripe_events_queue(settings.retry_delays_ms),
                {ANY_TYPE: apply_subscription_event},
            )
        ],
    )
    add_routes(app)
    return app
