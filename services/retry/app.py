"""The retry service: dunning (failed renewals retried with backoff) and the
member emails (``services/retry/notifications``).

Two consumer queues, each with its own handlers: ``retry.stripe-events``
opens, closes and resumes dunning cases; ``retry.notifications`` turns domain
events into emails. The scheduler (``scheduler.py``) makes the attempts.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.retry.api import routes
from services.retry.handlers import stripe_events_queue, stripe_handlers
from services.retry.notifications import consumer as notifications
from services.retry.scheduler import scheduler
from services.retry.settings import RetrySettings
from shared import runtime
from shared.clock import Clock

SCHEMA = "retry"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: RetrySettings, *, clock: Clock | None = None) -> web.Application:
    # The notifications queue exists even with emails off: it is what makes the
    # dunning events this service publishes routable (an unroutable event
    # would hold the outbox).
    consumes = [
        (stripe_events_queue(settings.retry_delays_ms), stripe_handlers(settings)),
        (
            notifications.notifications_queue(settings.retry_delays_ms),
            notifications.handlers(settings),
        ),
    ]
    app = runtime.service_app(
        settings,
        name="retry",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        consumes=consumes,
        routes=routes,
        clock=clock,
    )
    app.cleanup_ctx.append(scheduler(settings))
    if settings.notifications_enabled:
        app.cleanup_ctx.append(notifications.sender(settings))
    return app
