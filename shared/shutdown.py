"""How a service stops on SIGTERM, and how long it may take.

1. At once: the listening socket closes, so no new connection is accepted,
   and every consumer stops taking messages (``basic.cancel``).
2. The drain, ``ServiceSettings.shutdown_drain_seconds`` from SIGTERM:
   in-flight HTTP requests get their answers (a webhook waiting for its
   broker confirm gets its 200 or 503; a request still uploading its body
   gets the rest read) and in-flight messages finish (commit, then ack), side
   by side. Answers given meanwhile carry ``Connection: close``, so keep-alive
   clients go elsewhere for their next request.
3. Whatever still runs is cancelled, for at most ``CANCEL_SECONDS``: a
   message's transaction rolls back, and closing its channel hands it back to
   the queue unacknowledged. Nothing is acked without its commit.
4. The consumers' channels close, then the outbox relay publishes what is
   still pending (``OUTBOX_FINAL_DRAIN_SECONDS``), then the publisher, the
   broker connection, Stripe's client and the pool close, each bounded by
   ``CLOSE_SECONDS`` so a broker or database that stopped answering cannot
   hold the process past its grace period.

The orchestrator's grace period (``terminationGracePeriodSeconds``, compose's
``stop_grace_period``) must exceed any ``preStop`` pause plus the drain plus
:data:`TAIL_SECONDS`; ``tests/deploy`` checks the manifests against these
numbers.

aiohttp's own graceful shutdown is not enough for step 2: it stops reading
every connection at once, so a request whose body is still arriving can never
finish, and its client gets the connection closed after the whole timeout.
``shared.runtime.run`` therefore drains requests itself before handing over
to aiohttp's shutdown, counting them with :meth:`Shutdown.middleware`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from shared.http.middleware import Handler
from shared.logging import get_logger
from shared.waits import wait_set

log = get_logger(__name__)

T = TypeVar("T")

CANCEL_SECONDS = 3.0
CLOSE_SECONDS = 2.0
OUTBOX_FINAL_DRAIN_SECONDS = 5.0
# Everything after the drain, at worst: cancelling, closing the consumers'
# channels, the outbox's last drain, then four closes (publisher, broker
# connection, Stripe client, pool).
TAIL_SECONDS = CANCEL_SECONDS + CLOSE_SECONDS + OUTBOX_FINAL_DRAIN_SECONDS + 4 * CLOSE_SECONDS

BeginCallback = Callable[[], Awaitable[None]]


class Shutdown:
    """One app's shutdown: when it began, what to stop at once, and the HTTP
    requests still in flight."""

    def __init__(self, drain_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self._began: float | None = None
        self._on_begin: list[BeginCallback] = []
        self._requests = 0
        self._no_requests = asyncio.Event()
        self._no_requests.set()

    def on_begin(self, callback: BeginCallback) -> None:
        """Run ``callback`` as soon as shutdown begins (stop taking work)."""
        self._on_begin.append(callback)

    @property
    def began(self) -> bool:
        return self._began is not None

    async def begin(self) -> None:
        if self._began is not None:
            return
        self._began = time.monotonic()
        log.info("shutdown_begins", drain_seconds=self.drain_seconds, requests=self._requests)
        await asyncio.gather(*(callback() for callback in self._on_begin))

    def remaining(self) -> float:
        """Seconds left of the drain (all of it before shutdown began)."""
        if self._began is None:
            return self.drain_seconds
        return max(0.0, self._began + self.drain_seconds - time.monotonic())

    async def requests_done(self) -> bool:
        """Wait, until the drain ends at most, for in-flight requests to finish."""
        if self._requests == 0:
            return True
        if not await wait_set(self._no_requests, self.remaining()):
            log.warning("shutdown_requests_still_running", requests=self._requests)
            return False
        return True

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._requests += 1
        self._no_requests.clear()
        try:
            response = await handler(request)
            if self._began is not None:
                # Keep-alive clients open a new connection, to another replica.
                response.force_close()
            return response
        finally:
            self._requests -= 1
            if self._requests == 0:
                self._no_requests.set()


async def bounded(what: str, step: Awaitable[T], seconds: float = CLOSE_SECONDS) -> T | None:
    """Run one shutdown step for at most ``seconds``; a step that fails or
    overruns is logged and given up, so the next one still runs."""
    try:
        async with asyncio.timeout(seconds):
            return await step
    except TimeoutError:
        log.warning("shutdown_step_timed_out", step=what, seconds=seconds)
    except Exception as exc:
        log.warning("shutdown_step_failed", step=what, error=repr(exc))
    return None
