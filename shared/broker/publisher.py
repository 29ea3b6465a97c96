"""A publisher that reports success only once the broker has confirmed.

Every publish is mandatory and persistent on a channel in confirm mode; the
call returns after the broker's ``basic.ack`` and raises
:class:`PublishFailed` on a nack, an unroutable message, a lost connection or
no confirm within ``confirm_timeout``. Callers that answer someone else (the
gateway answering Stripe) turn that into a retryable error, so a message is
never acknowledged upstream before it is durable here.

It talks to aiormq directly rather than through aio-pika's robust wrappers:
this is the webhook hot path, and aiormq lets many publishes share a channel
without waiting for each frame to be flushed (``wait=False``); the confirm is
what we wait for. Reconnection is a background loop with jittered
exponential backoff (tenacity). While disconnected, publish fails at once
instead of queueing: a fast 503 lets Stripe retry, a hanging request does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any, cast

import aiormq
import aiormq.abc
from aiormq import spec
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from shared import metrics
from shared.broker.errors import PublishFailed
from shared.broker.topology import EXCHANGES
from shared.logging import get_logger

log = get_logger(__name__)

_CONNECT_ERRORS = (ConnectionError, OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError)


class Publisher:
    def __init__(
        self,
        url: str,
        *,
        name: str,
        confirm_timeout: float = 5.0,
        channels: int = 1,
    ) -> None:
        self._url = url
        self._name = name
        self._confirm_timeout = confirm_timeout
        self._channel_count = channels
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channels: list[aiormq.Channel] = []
        self._next_channel: Iterator[int] = itertools.cycle(range(channels))
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self, wait: float | None = None) -> None:
        """Start connecting in the background; optionally wait for the first connection."""
        self._task = asyncio.create_task(self._run(), name=f"publisher:{self._name}")
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)

    async def wait_ready(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), within)
        return self.ready

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None and not self._connection.is_closed:
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
        if not self._ready.is_set():
            self._fail(exchange, "broker_unavailable")
        slot = next(self._next_channel) % max(len(self._channels), 1)
        channel = self._channels[slot]
        properties = spec.Basic.Properties(
            message_id=message_id,
            delivery_mode=2,
            content_type=content_type,
            headers=dict(headers) if headers else None,
        )
        try:
            async with asyncio.timeout(self._confirm_timeout):
                result = await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                    wait=False,
                )
        except aiormq.exceptions.PublishError:
            self._fail(exchange, "unroutable", routing_key)
        except aiormq.exceptions.DeliveryError:
            self._fail(exchange, "nacked")
        except TimeoutError:
            self._fail(exchange, "timeout")
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            if channel.is_closed:
                self._reopen_soon(slot)
            self._fail(exchange, "broker_unavailable", repr(exc))
        if not isinstance(result, spec.Basic.Ack):
            self._fail(exchange, "nacked", repr(result))

    def _fail(self, exchange: str, reason: str, detail: str = "") -> Any:
        metrics.BROKER_PUBLISH_FAILURES.labels(exchange, reason).inc()
        raise PublishFailed(reason, detail)

    def _reopen_soon(self, slot: int) -> None:
        # A channel can close on its own (a publish to a missing exchange
        # closes it with 404) while the connection lives on.
        async def reopen() -> None:
            if self._connection is None or self._connection.is_closed:
                return
            with contextlib.suppress(*_CONNECT_ERRORS, RuntimeError):
                self._channels[slot] = await self._open_channel(self._connection)

        asyncio.create_task(reopen())  # noqa: RUF006 - fire and forget, bounded by the connection

    async def _open_channel(self, connection: aiormq.abc.AbstractConnection) -> aiormq.Channel:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # The concrete class: its basic_publish takes ``wait`` (see module doc).
        return cast(aiormq.Channel, channel)

    async def _connect(self) -> aiormq.abc.AbstractConnection:
        connection = await aiormq.connect(
            self._url, client_properties={"connection_name": f"{self._name}:publisher"}
        )
        channels = [await self._open_channel(connection) for _ in range(self._channel_count)]
        for exchange in EXCHANGES:
            await channels[0].exchange_declare(exchange, exchange_type="topic", durable=True)
        self._channels = channels
        return connection

    async def _run(self) -> None:
        while True:
            retrying = AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.2),
                retry=retry_if_exception_type(_CONNECT_ERRORS),
                before_sleep=lambda state: log.warning(
                    "broker_connect_failed",
                    attempt=state.attempt_number,
                    error=repr(state.outcome.exception()) if state.outcome else None,
                ),
            )
            connection: aiormq.abc.AbstractConnection = await retrying(self._connect)
            self._connection = connection
            self._ready.set()
            log.info("broker_connected", role="publisher")
            with contextlib.suppress(Exception):
                await connection.closing
            self._ready.clear()
            log.warning("broker_connection_lost", role="publisher")
