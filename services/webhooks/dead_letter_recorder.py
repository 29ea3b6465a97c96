"""Takes every message out of the watched dead-letter queues into Postgres.

One consumer per ``<queue>.dlq`` (the queues of ``dead_letter_queues``):
each message is written to ``dead_letters`` (``dead_letter_store.record``)
and acked only after the commit, so a crash in between delivers it again,
which the store recognises. A message that cannot be written (the database
away) is held unacked and written again with backoff, never handed back
while the recorder runs: each return would count against the queue's
delivery limit. Prefetch bounds how many one replica holds. Every replica
runs the recorder; they compete for messages like any consumers.

A letter the table refuses as it came (the letter's fault, not the
database's: a NUL in a header the row keeps as text, an attempt count beyond
an integer) is not retried as it is, which would hold it, and its prefetch
slot, for ever: it is stored fitted (``dead_letter_store.record_fitted``),
counted in ``dead_letters_fitted_total``. Should even that fail for a reason
of its own, it is tried ``_FITTED_ATTEMPTS`` times, then parked: published
whole, with ``x-parked-reason``, to ``<queue>.dlq.parked`` (confirmed before
the ack), counted in ``dead_letters_parked_total`` and logged as an error,
so the letters behind it are recorded and it is lost to no one.

The dead-letter queues belong to the services that consume ``<queue>``; the
recorder declares one that does not exist yet the same way (quorum, nothing
else), so a letter is taken whichever service starts first; and the parking
queues, its own.
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
from aiormq.abc import FieldTable
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from services.webhooks import dead_letter_store as store
from shared import metrics
from shared.broker.consumer import is_transient
from shared.broker.errors import PublishFailed
from shared.broker.publisher import Publisher
from shared.broker.topology import DEAD_LETTER_DELIVERY_LIMIT, QUORUM, dead_letter_queue
from shared.logging import get_logger, log_context
from shared.shutdown import bounded
from shared.waits import wait_set

log = get_logger(__name__)

# Between attempts to store a held message: quick for a blip, at most a few
# seconds while the database is away.
_STORE_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)
# Tries of a letter's fitted form that fail for a reason of the letter's own
# before it is parked.
_FITTED_ATTEMPTS = 3
# What a parked letter's x-parked-reason and x-raw-headers headers keep.
_REASON_LIMIT = 2_000
_RAW_HEADERS_LIMIT = 64 * 1024


# A parked letter is only ever read by an operator, whose every look with the
# management UI returns it to the queue: a delivery limit (RabbitMQ 4 gives a
# quorum queue 20 by default) would drop it. It is an argument, not a policy
# as for the other queues: it never changes, and no service applies policies
# for a queue the recorder alone uses.
_PARKING: FieldTable = {**QUORUM, "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT}


def parking_queue(queue: str) -> str:
    """Where a letter of ``queue`` goes that cannot be stored even fitted."""
    return f"{dead_letter_queue(queue)}.parked"


def _the_letters_fault(exc: BaseException) -> bool:
    """Whether storing failed because of the letter (it would fail on every
    try) rather than the database (away, restarting: waited out)."""
    return not is_transient(exc)


class _Stopping(Exception):
    """The recorder stops: the held message goes back to its queue."""


class DeadLetterRecorder:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        queues: Sequence[str],
        *,
        publisher: Publisher,
        prefetch: int = 16,
        metrics_seconds: float = 15.0,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
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
            dlq = await self._declare(connection, self._channel, dead_letter_queue(queue))
            await self._declare(connection, self._channel, parking_queue(queue), _PARKING)
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
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        name: str,
        arguments: FieldTable = QUORUM,
    ) -> AbstractQueue:
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
        return await channel.declare_queue(name, durable=True, arguments=arguments)

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
        try:
            try:
                recorded = await self._until_stored(store.record, self._pool, queue, message)
            except Exception as exc:
                recorded = await self._fitted_or_parked(queue, message, _reason(exc))
        except _Stopping:
            log.warning("dead_letter_returned_unstored")
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

    async def _until_stored(self, write: Any, *args: Any) -> bool:
        """``write(*args)``, tried again while the database is what fails
        (held unacked meanwhile, however long); an error of the letter's own
        is raised at once. :class:`_Stopping` when the recorder stops first."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: not _the_letters_fault(exc)),
            wait=_STORE_BACKOFF,
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
            recorded: bool = await retrying(write, *args)
        except Exception as exc:
            if self._stopping.is_set() and not _the_letters_fault(exc):
                raise _Stopping from exc
            raise
        return recorded

    async def _fitted_or_parked(
        self, queue: str, message: AbstractIncomingMessage, reason: str
    ) -> bool:
        """The letter refused as it came: stored fitted, or else parked."""
        log.warning("dead_letter_unfit", reason=reason)
        failures: list[str] = []
        for attempt in range(1, _FITTED_ATTEMPTS + 1):
            try:
                recorded = await self._until_stored(
                    store.record_fitted, self._pool, queue, message, reason
                )
            except _Stopping:
                raise
            except Exception as exc:
                failures.append(_reason(exc))
                log.warning("dead_letter_fitted_not_stored", attempt=attempt, error=failures[-1])
                if attempt < _FITTED_ATTEMPTS:
                    await self._pause_unless_stopping(0.2 * 2**attempt)
                    if self._stopping.is_set():
                        raise _Stopping from exc
                continue
            if recorded:
                metrics.DEAD_LETTERS_FITTED.labels(queue).inc()
            return recorded
        await self._park(queue, message, f"{reason}; fitted: {failures[-1]}")
        return False

    async def _park(self, queue: str, message: AbstractIncomingMessage, reason: str) -> None:
        """Publish the letter whole to its parking queue, confirmed; tried
        again (held unacked meanwhile) while the broker does not confirm.
        Headers the broker will not take back go as text, in ``x-raw-headers``."""
        parked = parking_queue(queue)
        received = dict(message.headers or {})
        headers: dict[str, Any] = {**received, "x-parked-reason": reason[:_REASON_LIMIT]}
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._publisher.publish(
                    "",
                    parked,
                    message.body,
                    message_id=message.message_id or "",
                    headers=headers,
                    content_type=message.content_type or "application/octet-stream",
                )
                break
            except PublishFailed as exc:
                log.warning("dead_letter_not_parked", attempt=attempt, error=str(exc))
            except Exception as exc:
                # Not the broker: the headers as received do not encode again.
                log.warning("dead_letter_not_parked", attempt=attempt, error=_reason(exc))
                headers = {
                    "x-parked-reason": reason[:_REASON_LIMIT],
                    "x-raw-headers": ascii(received)[:_RAW_HEADERS_LIMIT],
                }
            await self._pause_unless_stopping(min(0.2 * 2**attempt, 5.0))
            if self._stopping.is_set():
                raise _Stopping
        metrics.DEAD_LETTERS_PARKED.labels(queue).inc()
        # An error: no operator lists it through the API; it waits in RabbitMQ.
        log.error("dead_letter_parked", parked_in=parked, reason=reason)

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


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]
