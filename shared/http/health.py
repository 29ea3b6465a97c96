"""``/healthz`` (the process is alive), ``/readyz`` (its dependencies answer)
and ``/metrics`` (Prometheus text format).

A scrape of ``/metrics`` runs the readiness checks too, so ``service_ready``
tells Prometheus which check fails on a pod that stays up but takes no
traffic (the ServiceNotReady alert); the probes alone would only show it to
the orchestrator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import metrics
from shared.http.errors import json_response

ReadinessCheck = Callable[[], Awaitable[bool]]
_CHECK_TIMEOUT = 2.0


async def _run_check(check: ReadinessCheck) -> bool:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            return await check()
    except Exception:
        return False


def add_health_routes(app: web.Application, checks: Mapping[str, ReadinessCheck]) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def run_checks() -> dict[str, bool]:
        names = list(checks)
        results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
        status = dict(zip(names, results, strict=True))
        for name, ok in status.items():
            metrics.SERVICE_READY.labels(name).set(1 if ok else 0)
        return status

    async def readyz(_: web.Request) -> web.Response:
        status = await run_checks()
        ready = all(status.values())
        return json_response(
            {"status": "ready" if ready else "not_ready", "checks": status},
            status=200 if ready else 503,
        )

    async def metrics_view(_: web.Request) -> web.Response:
        await run_checks()
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
