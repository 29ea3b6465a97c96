"""A publisher that reports success only once the broker has confirmed.

Every publish is mandatory and persistent; :meth:`Publisher.publish` returns
after the broker's ``basic.ack`` and raises :class:`PublishFailed` on a nack,
an unroutable message, a lost or blocked connection, or no confirm within
``confirm_timeout``. Callers that answer someone else (the gateway answering
Stripe) turn that into a retryable error, so a message is never acknowledged
upstream before it is durable here.

The wire work is :class:`ConfirmConnection` (see its module for why it is not
aiormq). This class keeps one open: a background loop reconnects with
jittered exponential backoff (tenacity), whatever the error, logging each
failure with its reason; it only ends when the publisher is closed. While
disconnected, publish fails at once instead of queueing: a fast 503 lets
Stripe retry; a hanging request does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from shared import metrics
from shared.broker.confirm_connection import AmqpAddress, ConfirmConnection
from shared.broker.errors import PublishFailed
from shared.broker.topology import EXCHANGES
from shared.logging import get_logger
from shared.waits import wait_set

log = get_logger(__name__)

# Failures that fix themselves when the network or the broker comes back.
# Anything else (a refused login, a missing vhost, a peer that is not a
# broker, a bug) is retried all the same, but logged as an error: it needs
# someone to act.
_NETWORK_ERRORS = (ConnectionError, OSError, TimeoutError)
_HANDSHAKE_TIMEOUT = 10.0


class Publisher:
    def __init__(
        self,
        url: str,
        *,
        name: str,
        confirm_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._address = AmqpAddress.parse(url)
        self._ssl_context = ssl_context
        self._name = name
        self._confirm_timeout = confirm_timeout
        self._connection: ConfirmConnection | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure_counters: dict[tuple[str, str], Any] = {}

    @property
    def ready(self) -> bool:
        connection = self._connection
        return connection is not None and connection.usable

    async def start(self, wait: float | None = None) -> None:
        """Start connecting in the background; optionally wait for the first connection."""
        self._task = asyncio.create_task(self._run(), name=f"publisher:{self._name}")
        if wait:
            await self.wait_ready(wait)

    async def wait_ready(self, within: float) -> bool:
        await wait_set(self._ready, within)
        return self.ready

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            await self._connection.close()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> None:
        connection = self._connection
        try:
            if connection is None:
                raise PublishFailed("broker_unavailable", "not connected")
            await connection.publish(
                exchange,
                routing_key,
                body,
                message_id=message_id,
                content_type=content_type,
                headers=headers,
            )
        except PublishFailed as exc:
            self._count_failure(exchange, exc.reason)
            raise

    def _count_failure(self, exchange: str, reason: str) -> None:
        key = (exchange, reason)
        counter = self._failure_counters.get(key)
        if counter is None:
            counter = self._failure_counters[key] = metrics.BROKER_PUBLISH_FAILURES.labels(*key)
        counter.inc()

    async def _connect(self) -> ConfirmConnection:
        connection = ConfirmConnection(
            name=f"{self._name}:publisher", confirm_timeout=self._confirm_timeout
        )
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            await connection.open(self._address, EXCHANGES, ssl_context=self._ssl_context)
        return connection

    def _connect_failed(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log_at = log.warning if isinstance(error, _NETWORK_ERRORS) else log.error
        log_at(
            "broker_connect_failed",
            role="publisher",
            broker=str(self._address),
            attempt=state.attempt_number,
            error=repr(error),
            retry_in=round(state.upcoming_sleep, 2),
        )

    async def _run(self) -> None:
        # Whatever fails, the loop logs it and tries again: a publisher that
        # stopped reconnecting would leave the service running but unable to
        # publish until someone restarted it. Only cancellation (close) ends it.
        while True:
            retrying = AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.2),
                retry=retry_if_exception_type(Exception),
                before_sleep=self._connect_failed,
            )
            connection: ConfirmConnection = await retrying(self._connect)
            self._connection = connection
            self._ready.set()
            log.info("broker_connected", role="publisher", broker=str(self._address))
            # Shielded: close() cancels this task, and the cancellation must
            # not reach the connection's own future (close() reads it).
            reason = await asyncio.shield(connection.closed)
            self._ready.clear()
            log.warning("broker_connection_lost", role="publisher", reason=repr(reason))
