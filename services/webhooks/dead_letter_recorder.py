"""Takes every message out of the watched dead-letter queues into Postgres.

One consumer per ``<queue>.dlq`` (the queues of ``dead_letter_queues``):
each message is written to ``dead_letters`` (``dead_letter_store.record``)
and acked only after the commit, so a crash in between delivers it again,
which the store recognises. A message that cannot be written (the database
away) is held unacked and written again with backoff, never handed back
while the recorder runs: each return would count against the queue's
delivery limit. Prefetch bounds how many one replica holds. Every replica
runs the recorder; they compete for messages like any consumers.

The dead-letter queues belong to the services that consume ``<queue>``; the
recorder declares one that does not exist yet the same way (quorum, nothing
else), so a letter is taken whichever service starts first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aiormq
import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from services.webhooks import dead_letter_store as store
from shared import metrics
from shared.broker.topology import QUORUM, dead_letter_queue
from shared.logging import get_logger, log_context
from shared.shutdown import bounded
from shared.waits import wait_set

log = get_logger(__name__)

# Between attempts to store a held message: quick for a blip, at most a few
# seconds while the database is away.
_STORE_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)


class DeadLetterRecorder:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        queues: Sequence[str],
        *,
        prefetch: int = 16,
        metrics_seconds: float = 15.0,
    ) -> None:
        self._pool = pool
        self._queues = list(queues)
        self._prefetch = prefetch
        self._metrics_seconds = metrics_seconds
        self._channel: AbstractChannel | None = None
        self._consuming: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._metrics_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self, connection: AbstractRobustConnection) -> None:
        self._channel = await connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._prefetch)
        for queue in self._queues:
            dlq = await self._declare(connection, self._channel, queue)
            tag = await dlq.consume(self._handler(queue))
            self._consuming.append((dlq, tag))
        self._metrics_task = asyncio.create_task(
            self._refresh_metrics(), name="dead-letter-metrics"
        )
        log.info("dead_letter_recorder_started", queues=self._queues)

    def changed(self) -> None:
        """Refresh the gauges soon (a redrive or discard just changed them)."""
        self._changed.set()

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping.set()
        for dlq, tag in self._consuming:
            with contextlib.suppress(Exception):
                await bounded("dead_letter_cancel", dlq.cancel(tag))
        self._consuming.clear()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace)
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        if self._channel is not None and not self._channel.is_closed:
            await bounded("dead_letter_channel_close", self._channel.close())

    @staticmethod
    async def _declare(
        connection: AbstractRobustConnection, channel: AbstractChannel, queue: str
    ) -> AbstractQueue:
        name = dead_letter_queue(queue)
        # A queue an earlier release declared with more arguments fails a
        # declare with QUORUM alone, and a failed declare closes its channel:
        # probe on a channel of its own.
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(name, passive=True)
            exists = True
        except aiormq.exceptions.ChannelNotFoundEntity:
            exists = False
        finally:
            if not probe.is_closed:
                await probe.close()
        if exists:
            return await channel.declare_queue(name, passive=True)
        return await channel.declare_queue(name, durable=True, arguments=QUORUM)

    def _handler(self, queue: str) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            try:
                with log_context(queue=queue, message_id=message.message_id):
                    await self._take(queue, message)
            finally:
                if task is not None:
                    self._in_flight.discard(task)

        return on_message

    async def _take(self, queue: str, message: AbstractIncomingMessage) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=_STORE_BACKOFF,
            # Stopping: the message goes back to its queue when the channel closes.
            stop=lambda _: self._stopping.is_set(),
            sleep=self._pause_unless_stopping,
            before_sleep=lambda state: log.warning(
                "dead_letter_not_stored",
                attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )
        try:
            recorded: bool = await retrying(store.record, self._pool, queue, message)
        except Exception as exc:
            log.warning("dead_letter_returned_unstored", error=repr(exc))
            return
        try:
            await message.ack()
        except Exception as exc:
            # Stored; the broker delivers it again and record() sees the same copy.
            log.warning("ack_failed_redelivery_expected", error=repr(exc))
        if recorded:
            metrics.DEAD_LETTERS_RECORDED.labels(queue).inc()
            log.warning("dead_letter_recorded")
            self._changed.set()

    async def _pause_unless_stopping(self, seconds: float) -> None:
        await wait_set(self._stopping, seconds)

    async def _refresh_metrics(self) -> None:
        while True:
            self._changed.clear()
            try:
                await store.refresh_metrics(self._pool, self._queues)
            except Exception as exc:
                log.warning("dead_letter_metrics_failed", error=repr(exc))
            await wait_set(self._changed, self._metrics_seconds)
