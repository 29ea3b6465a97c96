"""MRR per currency as a Prometheus gauge, for the dashboard and alerts.

``GET /v1/admin/revenue`` computes the figures on demand; a scrape must not
scan every subscription, so each replica recomputes them on a timer
(``REVENUE_GAUGE_SECONDS``) from the same code and exports the last result.
Every replica exports the same figure: aggregate with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from services.subscriptions import revenue
from services.subscriptions.metrics import ACCESS_GRANTING, MRR
from shared import runtime
from shared.logging import get_logger

log = get_logger(__name__)


# Currencies this process has exported: one whose last subscription ended
# drops out of the figures, and its gauge must fall to 0, not keep the last value.
_exported: set[str] = set()


async def refresh(app: web.Application) -> None:
    figures = await revenue.compute(app[runtime.POOL], app[runtime.CLOCK].now())
    current = {c.currency: c.mrr for c in figures.by_currency}
    _exported.update(current)
    for currency in _exported:
        MRR.labels(currency).set(current.get(currency, 0))
    ACCESS_GRANTING.labels("active").set(figures.active)
    ACCESS_GRANTING.labels("trialing").set(figures.trialing)


def revenue_gauge(interval: float) -> runtime.CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await refresh(app)
                except Exception as exc:  # the gauge goes stale; billing goes on
                    log.warning("revenue_gauge_failed", error=repr(exc))
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
