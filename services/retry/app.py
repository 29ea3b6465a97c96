"""The retry service: dunning (failed renewals retried with backoff).

Its consumers and API arrive with its own features; the process, schema,
broker connection and health endpoints are in place so it deploys and is
watched like every other service.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.retry.settings import RetrySettings
from shared import runtime
from shared.clock import Clock

SCHEMA = "retry"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: RetrySettings, *, clock: Clock | None = None) -> web.Application:
    return runtime.service_app(
        settings, name="retry", schema=SCHEMA, migrations=MIGRATIONS, clock=clock
    )
