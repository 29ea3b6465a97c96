"""The subscriptions service: billing state mirrored from Stripe."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.subscriptions.api import add_routes
from services.subscriptions.handlers import apply_subscription_event, stripe_events_queue
from services.subscriptions.settings import SubscriptionsSettings
from shared import runtime
from shared.broker.consumer import ANY_TYPE, Consumer

SCHEMA = "subscriptions"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: SubscriptionsSettings) -> web.Application:
    app = runtime.base_app(settings)

    def build_consumers(app: web.Application) -> list[Consumer]:
        return [
            Consumer(
                queue=stripe_events_queue(settings.retry_delays_ms),
                pool=app[runtime.POOL],
                publisher=app[runtime.PUBLISHER],
                # Every customer.subscription.* event carries a subscription snapshot.
                handlers={ANY_TYPE: apply_subscription_event},
                prefetch=settings.consumer_prefetch,
            )
        ]

    app.cleanup_ctx.extend(
        [
            runtime.postgres(settings, SCHEMA, MIGRATIONS),
            runtime.broker(settings, "subscriptions"),
            runtime.consumers(build_consumers),
        ]
    )
    runtime.add_standard_routes(app)
    add_routes(app)
    return app
