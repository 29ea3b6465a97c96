"""The credits service: credit ledger (grants, spends, expiry, reversal).

Its consumers and API arrive with its own features; the process, schema,
broker connection and health endpoints are in place so it deploys and is
watched like every other service.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.credits.settings import CreditsSettings
from shared import runtime
from shared.clock import Clock

SCHEMA = "credits"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: CreditsSettings, *, clock: Clock | None = None) -> web.Application:
    return runtime.service_app(
        settings, name="credits", schema=SCHEMA, migrations=MIGRATIONS, clock=clock
    )
