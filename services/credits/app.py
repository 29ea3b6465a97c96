"""The credits service: credit ledger (grants, spends, expiry, reversal).

It consumes the domain events on ``billing.events`` (grants from activations
and renewals, credit packs from payments, claw-backs from refunds and
disputes), serves balances, spends and reversals, and sweeps expired credits
on a timer in every replica.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.credits import expiry, overage
from services.credits.api import routes
from services.credits.handlers import billing_events_queue, build_handlers
from services.credits.settings import CreditsSettings
from shared import catalog, runtime
from shared.clock import Clock

SCHEMA = "credits"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: CreditsSettings, *, clock: Clock | None = None) -> web.Application:
    app = runtime.service_app(
        settings,
        name="credits",
        schema=SCHEMA,
        migrations=MIGRATIONS,
        consumes=[(billing_events_queue(settings.retry_delays_ms), build_handlers())],
        routes=routes,
        clock=clock,
    )
    app.cleanup_ctx.append(
        expiry.scheduled(settings.credits_sweep_interval_seconds, catalog.default)
    )
    app.cleanup_ctx.append(overage.scheduled(settings.credits_overage_retry_seconds))
    return app
