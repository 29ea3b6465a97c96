"""The consumer base: the one place that decides a message's fate.

The ack rule:

1. Decode the message once, find the handler registered for its ``type``
   (``shared/broker/handlers.py``) and validate it against the handler's model.
2. In one Postgres transaction, record the message id in the service's
   ``inbox`` table and run the handler. If the id is already there, this is a
   duplicate (Stripe's, the broker's, or a replay): skip the effect. A handler
   that needs Stripe's current object raises ``Refetch``: the transaction
   rolls back, the object is read from Stripe outside any transaction, and
   step 2 runs again with it.
3. Commit, then ack. A crash between commit and ack redelivers the message,
   which step 2 then recognises as a duplicate.
4. On failure the transaction rolls back (no effect, no inbox row):
   - :class:`InvalidMessage` (or a validation error): straight to ``Q.dlq``.
   - :class:`RetryLater`, or an infrastructure error (:func:`is_transient`):
     to the next delay queue, bounded by ``retry_later_limit``.
   - anything else: to the next delay queue up to ``len(retry_delays_ms)``
     times, then ``Q.dlq``.
   The copy is published with confirms *before* the original is acked, so a
   failure in between yields a duplicate, never a loss. While the copy cannot
   be published (broker alarm, publisher disconnected) the original is held
   unacked and the copy retried with backoff; it is never handed back to the
   queue, where each redelivery would count against the delivery limit.

The attempt count travels in the ``x-attempt`` header; the last error in
``x-last-error`` so an operator reading the dead-letter queue sees why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import asyncpg
import orjson
import pydantic
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from shared import db, metrics
from shared.broker.errors import InvalidMessage, PublishFailed, RetryLater
from shared.broker.handlers import Context, Fetcher, Handlers, Refetch, Registration
from shared.broker.publisher import Publisher
from shared.broker.topology import (
    ConsumerQueue,
    declare_consumer_queue,
    declared_by_an_earlier_release,
)
from shared.clock import Clock, SystemClock
from shared.logging import get_logger, log_context
from shared.outbox import Outbox
from shared.shutdown import CANCEL_SECONDS, bounded
from shared.waits import wait_set

log = get_logger(__name__)
# Failures of the infrastructure rather than of the message: the database
# unreachable or restarting, a lost serialisation race. asyncpg raises a bare
# InterfaceError for a closed or lost connection, and subclasses of it for
# what is the caller's fault: see is_transient().
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)
# InterfaceErrors that say the input or the code is wrong: a retry finds it
# as wrong. ClientConfigurationError and asyncpg's client-side DataError
# (argument it cannot encode) are also ValueErrors.
_NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    ValueError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the infrastructure's failure, not the message's or
    the handler's: the one classification of the consumer (such a failure
    gets RetryLater's larger bound, so a database outage does not
    dead-letter everything in flight after a few minutes) and of the
    dead-letter recorder (``services/webhooks/dead_letter_recorder.py``,
    which waits such a failure out instead of parking the letter)."""
    return isinstance(exc, _TRANSIENT_ERRORS) and not isinstance(exc, _NOT_TRANSIENT)


# The last error travels in a message header: keep it bounded.
_ERROR_HEADER_LIMIT = 2_000
# Between attempts to publish a held message's copy: quick for a blip,
# at most a few seconds once the publisher is back.
_COPY_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)


class Consumer:
    def __init__(
        self,
        *,
        queue: ConsumerQueue,
        pool: asyncpg.Pool[Any],
        publisher: Publisher,
        handlers: Handlers,
        source: str,
        prefetch: int = 32,
        retry_later_limit: int = 20,
        clock: Clock | None = None,
        fetch: Fetcher | None = None,
    ) -> None:
        self.queue = queue
        self._pool = pool
        self._publisher = publisher
        self._handlers = handlers
        self._source = source
        self._clock = clock or SystemClock()
        self._fetch = fetch
        self._prefetch = prefetch
        self._retry_later_limit = retry_later_limit
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        # Export every outcome from the start: an alert on the increase of
        # dead_lettered must see the series at 0 before the first one.
        for outcome in ("processed", "duplicate", "retried", "dead_lettered"):
            metrics.MESSAGES_HANDLED.labels(queue.name, outcome)

    @property
    def consuming(self) -> bool:
        """Whether messages are being taken from the queue."""
        return (
            self._consumer_tag is not None
            and self._channel is not None
            and not self._channel.is_closed
            and not self._stopping.is_set()
        )

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Declare the queue's topology, then take messages from it."""
        await self.declare(connection)
        await self.consume()

    async def declare(self, connection: AbstractRobustConnection) -> None:
        """Open the consumer's channel and declare the queue's topology, so
        messages routed to it are kept; nothing is taken yet."""
        as_they_are = await declared_by_an_earlier_release(connection, self.queue)
        self._channel = await connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._amqp_queue = await declare_consumer_queue(
            self._channel, self.queue, as_they_are=as_they_are
        )

    async def consume(self) -> None:
        if self._amqp_queue is None:
            raise RuntimeError("declare the queue before consuming it")
        if self._stopping.is_set() or self._consumer_tag is not None:
            return
        self._consumer_tag = await self._amqp_queue.consume(self._on_message)
        log.info("consumer_started", queue=self.queue.name, prefetch=self._prefetch)

    async def stop_taking(self) -> None:
        """Take no more messages (``basic.cancel``); those in hand carry on.

        Also lets a message held for a copy that cannot be published give up:
        it goes back to the queue, unacknowledged and with its attempt count
        as it was, when the channel closes.
        """
        self._stopping.set()
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is None or self._amqp_queue is None or self._channel is None:
            return
        if not self._channel.is_closed:
            await bounded("consumer_cancel", self._amqp_queue.cancel(tag))
        # Deliveries already read from the socket start their handlers now,
        # so the drain below sees them.
        await asyncio.sleep(0)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages, give in-flight ones ``grace`` seconds to
        finish, cancel those still running (their transactions roll back),
        then close the channel: whatever is unacked goes back to the queue."""
        await self.stop_taking()
        if self._in_flight:
            _, running = await asyncio.wait(set(self._in_flight), timeout=grace)
            if running:
                log.warning(
                    "consumer_cancelling_in_flight", queue=self.queue.name, count=len(running)
                )
                for task in running:
                    task.cancel()
                await asyncio.wait(running, timeout=CANCEL_SECONDS)
        if self._channel is not None and not self._channel.is_closed:
            await bounded("consumer_channel_close", self._channel.close())
        log.info("consumer_stopped", queue=self.queue.name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        gauge = metrics.MESSAGES_IN_FLIGHT.labels(self.queue.name)
        gauge.inc()
        _observe_wait(self.queue.name, message)
        started = time.perf_counter()
        try:
            with log_context(queue=self.queue.name, message_id=message.message_id):
                await self.process(message)
        finally:
            gauge.dec()
            metrics.MESSAGE_HANDLE_SECONDS.labels(self.queue.name).observe(
                time.perf_counter() - started
            )
            if task is not None:
                self._in_flight.discard(task)

    async def process(self, message: AbstractIncomingMessage) -> None:
        attempt = _attempt(message)
        try:
            body, registration = self._decode(message)
            with log_context(event_id=body["id"], event_type=body["type"]):
                outcome = await self._apply(body, registration)
        except (InvalidMessage, pydantic.ValidationError) as exc:
            await self._dead_letter(message, attempt, exc)
            return
        except Exception as exc:
            later = isinstance(exc, RetryLater) or is_transient(exc)
            limit = self._retry_later_limit if later else len(self.queue.retry_delays_ms)
            if attempt >= limit:
                await self._dead_letter(message, attempt, exc)
            else:
                await self._retry(message, attempt, exc)
            return
        try:
            await message.ack()
        except Exception as exc:
            # Committed but not acked (the channel died): the broker redelivers
            # and the inbox turns the redelivery into a no-op.
            log.warning("ack_failed_redelivery_expected", error=repr(exc))
            return
        metrics.MESSAGES_HANDLED.labels(self.queue.name, outcome).inc()

    def _decode(self, message: AbstractIncomingMessage) -> tuple[dict[str, Any], Registration]:
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidMessage(f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise InvalidMessage("body is not an object with a string id")
        event_type = body.get("type")
        if not isinstance(event_type, str):
            raise InvalidMessage("body has no string type")
        registration = self._handlers.lookup(event_type)
        if registration is None:
            raise InvalidMessage(f"no handler for {event_type} on {self.queue.name}")
        return body, registration

    async def _apply(self, body: dict[str, Any], registration: Registration) -> str:
        # Validated once, before any transaction: a message that does not fit
        # its model is invalid whatever the database holds.
        event = registration.model.model_validate(body)
        try:
            return await self._apply_once(body, registration, event, fetched=None)
        except Refetch as request:
            if self._fetch is None:
                raise RetryLater(f"{request}: this consumer cannot read Stripe") from request
            # Outside any transaction: Stripe's latency never holds row locks.
            fetched = await self._fetch(request.kind, request.object_id)
            return await self._apply_once(body, registration, event, fetched=fetched)

    async def _apply_once(
        self,
        body: dict[str, Any],
        registration: Registration,
        event: Any,
        *,
        fetched: Mapping[str, Any] | None,
    ) -> str:
        return await apply_in_inbox(
            self._pool,
            queue=self.queue.name,
            source=self._source,
            clock=self._clock,
            body=body,
            registration=registration,
            event=event,
            fetched=fetched,
        )

    async def _retry(
        self, message: AbstractIncomingMessage, attempt: int, error: BaseException
    ) -> None:
        target = self.queue.retry_queue(attempt)
        log.warning("message_retry", attempt=attempt + 1, delay_queue=target, error=repr(error))
        if await self._republish(message, target, attempt + 1, error):
            metrics.MESSAGES_HANDLED.labels(self.queue.name, "retried").inc()

    async def _dead_letter(
        self, message: AbstractIncomingMessage, attempt: int, error: BaseException
    ) -> None:
        log.error("message_dead_lettered", attempt=attempt, error=repr(error))
        if await self._republish(message, self.queue.dead_letter_queue, attempt, error):
            metrics.MESSAGES_HANDLED.labels(self.queue.name, "dead_lettered").inc()

    async def _republish(
        self,
        message: AbstractIncomingMessage,
        target_queue: str,
        attempt: int,
        error: BaseException,
    ) -> bool:
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-attempt": attempt,
                "x-last-error": f"{type(error).__name__}: {error}"[:_ERROR_HEADER_LIMIT],
                "x-failed-at": datetime.now(UTC).isoformat(),
                "x-origin-queue": self.queue.name,
            }
        )
        headers.setdefault("x-original-exchange", message.exchange or "")
        headers.setdefault("x-original-routing-key", message.routing_key or "")
        if not await self._publish_copy(message, target_queue, headers):
            return False
        try:
            await message.ack()
        except Exception as exc:
            # The copy is parked; the original comes back too and the inbox (or
            # the next failure) deals with the second copy.
            log.warning("ack_failed_redelivery_expected", error=repr(exc))
        return True

    async def _publish_copy(
        self, message: AbstractIncomingMessage, target_queue: str, headers: dict[str, Any]
    ) -> bool:
        """Publish the copy of ``message``, holding ``message`` unacked until it is confirmed.

        The original is never handed back (nack, requeue) for a copy that
        failed: it would come straight back, fail again, and the queue's
        delivery limit would dead-letter it within milliseconds, its retry
        tiers unused. Held, it keeps its attempt count; prefetch bounds how
        many one consumer holds, so while the broker refuses publishes the
        consumer stops taking new messages instead of spinning through them.

        False when the consumer stops, or the channel the original came on
        closes, before the copy got through: the original then goes back to
        the queue unacked, as it was.
        """
        hold = _Hold(self.queue.name, target_queue)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(PublishFailed),
            wait=_COPY_BACKOFF,
            stop=lambda _: self._stopping.is_set() or _delivery_channel_closed(message),
            sleep=self._pause_unless_stopping,
            before_sleep=hold.copy_failed,
            reraise=True,
        )
        published = False
        try:
            await retrying(
                self._publisher.publish,
                "",
                target_queue,
                message.body,
                message_id=message.message_id or "",
                headers=headers,
            )
            published = True
        except PublishFailed:
            pass
        finally:
            # Also when the task is cancelled: its channel closed under it.
            hold.end(published=published)
        return published

    async def _pause_unless_stopping(self, seconds: float) -> None:
        await wait_set(self._stopping, seconds)


async def apply_in_inbox(
    pool: asyncpg.Pool[Any],
    *,
    queue: str,
    source: str,
    clock: Clock,
    body: Mapping[str, Any],
    registration: Registration,
    event: Any,
    fetched: Mapping[str, Any] | None,
) -> str:
    """Step 2 of the ack rule: record the message in the inbox and run its
    handler, in one transaction; "duplicate" when the inbox had it already.

    Also the path of an object re-read on request (``shared/mirror_routes.py``),
    so a repair is applied exactly as a delivered event would be.
    """
    async with db.transaction(pool) as conn:
        first_time = await conn.fetchval(
            "INSERT INTO inbox (event_id, event_type, queue) VALUES ($1, $2, $3)"
            " ON CONFLICT (event_id, queue) DO NOTHING RETURNING true",
            body["id"],
            body["type"],
            queue,
        )
        if not first_time:
            await conn.execute(
                "UPDATE inbox SET duplicate_count = duplicate_count + 1,"
                " last_seen_at = now() WHERE event_id = $1 AND queue = $2",
                body["id"],
                queue,
            )
            log.debug("duplicate_skipped")
            return "duplicate"
        ctx = Context(
            conn=conn,
            clock=clock,
            outbox=Outbox(conn, source=source, clock=clock),
            message_id=body["id"],
            queue=queue,
            body=body,
            fetched=fetched,
        )
        await registration.handle(event, ctx)
    return "processed"


class _Hold:
    """The log lines and the held-messages gauge of one held message."""

    def __init__(self, queue: str, target_queue: str) -> None:
        self._queue = queue
        self._target = target_queue
        self._since: float | None = None
        self._error: BaseException | None = None

    def copy_failed(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self._error = error
        if self._since is None:
            self._since = time.monotonic()
            metrics.MESSAGES_HELD.labels(self._queue).inc()
            log.warning("message_held_copy_failed", target=self._target, error=repr(error))
        else:
            # The gauge says it for as long as it lasts; one line per retry
            # per held message would flood the log during an outage.
            log.debug(
                "message_held_copy_failed",
                target=self._target,
                attempt=state.attempt_number,
                error=repr(error),
            )

    def end(self, *, published: bool) -> None:
        if self._since is None:
            if not published:
                log.warning("message_returned_unacked", target=self._target)
            return
        metrics.MESSAGES_HELD.labels(self._queue).dec()
        held_seconds = round(time.monotonic() - self._since, 3)
        if published:
            log.info("message_held_copy_published", target=self._target, held_seconds=held_seconds)
        else:
            log.warning(
                "message_returned_unacked",
                target=self._target,
                held_seconds=held_seconds,
                error=repr(self._error),
            )


def _delivery_channel_closed(message: AbstractIncomingMessage) -> bool:
    """True once the channel ``message`` came on is gone: the broker has it back."""
    try:
        return bool(message.channel.is_closed)
    except aiormq.exceptions.ChannelInvalidStateError:
        return True


def _observe_wait(queue: str, message: AbstractIncomingMessage) -> None:
    # First deliveries only: a retried copy's timestamp is its republish, so
    # its wait would include the retry delay; a redelivery's, the time it
    # spent with a consumer that went away.
    if message.timestamp is None or message.redelivered or _attempt(message):
        return
    waited = time.time() - message.timestamp.timestamp()
    metrics.MESSAGE_WAIT_SECONDS.labels(queue).observe(max(0.0, waited))


def _attempt(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get("x-attempt", 0)
    return value if isinstance(value, int) else 0
