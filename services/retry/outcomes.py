"""Attempt outcomes written together: many attempts' transactions as one.

Each attempt ends with a short transaction (record the outcome, move the case,
write its event to the outbox). Run one by one, the ``BEGIN``, the ``COMMIT``
and the pool's reset of the connection are half the round trips of an attempt,
for the replica and for Postgres alike. Here the outcomes that end while one
transaction is being written wait for it and then go in the next, together: a
group commit. The first outcome of a batch also waits up to ``linger`` seconds
(a few milliseconds) for others to join it, unless the batch fills first: at
a hundred attempts a second a transaction takes less time than the gap between
two outcomes, and without the wait nearly every batch would hold one.

What a crash can lose does not change in kind. An outcome is committed with the
case's move (``pending_attempt`` cleared, the lease released) in one
transaction, so until that transaction commits the case keeps its pending
attempt number and its lease: a replica that dies with outcomes waiting (or in
an uncommitted batch) leaves those cases to be claimed again when their leases
end, with the same attempt number, hence the same Stripe idempotency key, and
Stripe answers the first request's outcome instead of charging again. Only
the time an outcome waits before its commit grows, by at most one batch's
write and the linger (milliseconds), far inside the lease.

A batch whose transaction fails (a deadlock with an event's transaction, a
constraint, a dropped connection) is not retried as a whole: each of its
outcomes is written again alone, in its own transaction, so one bad outcome
fails only its own attempt. What the writes count (``shared.counting``) is
counted when their transaction commits, so the outcomes of a failed batch
are counted once, by the transactions that wrote them. A writer stopped with
outcomes unwritten (its task cancelled at shutdown) fails them: their
attempts end as crashed, and their cases wait for their leases as above.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from shared import db
from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
Write = Callable[[Any], Awaitable[T]]


class _Pending(Generic[T]):
    __slots__ = ("done", "write")

    def __init__(self, write: Write[T], done: asyncio.Future[T]) -> None:
        self.write = write
        self.done = done


class OutcomeWriter:
    """Runs outcome writes ``write(conn)`` in shared transactions, at most
    ``max_batch`` in one; one batch is written at a time."""

    def __init__(self, pool: Any, *, max_batch: int = 100, linger: float = 0.0) -> None:
        self._pool = pool
        self._max_batch = max(1, max_batch)
        self._linger = linger
        self._full = asyncio.Event()
        self._queue: list[_Pending[Any]] = []
        self._writing: asyncio.Task[None] | None = None

    async def run(self, write: Write[T]) -> T:
        """Run ``write`` in a transaction (maybe shared with others); returns what
        it returned once that transaction has committed, or raises what it raised
        (alone in its own transaction)."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(write, done))
        if len(self._queue) >= self._max_batch:
            self._full.set()
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_all(), name="dunning-outcomes")
        # Shielded: an attempt cancelled while waiting (a shutdown) must not
        # cancel the batch it shares with others; its outcome is written anyway.
        return await asyncio.shield(done)

    async def _write_all(self) -> None:
        batch: list[_Pending[Any]] = []
        try:
            while self._queue:
                if self._linger > 0 and len(self._queue) < self._max_batch:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._linger):
                            await self._full.wait()
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._write(batch)
        finally:
            self._writing = None
            for pending in (*batch, *self._queue):
                if not pending.done.done():
                    pending.done.set_exception(RuntimeError("outcome writer stopped"))
            self._queue.clear()

    async def _write(self, batch: list[_Pending[Any]]) -> None:
        if len(batch) > 1:
            try:
                results = await self._together(batch)
            except Exception as exc:
                log.warning("dunning_outcomes_batch_failed", size=len(batch), error=repr(exc))
            else:
                for pending, result in zip(batch, results, strict=True):
                    if not pending.done.done():
                        pending.done.set_result(result)
                return
        for pending in batch:
            try:
                async with db.transaction(self._pool) as conn:
                    result = await pending.write(conn)
            except Exception as exc:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            else:
                if not pending.done.done():
                    pending.done.set_result(result)

    async def _together(self, batch: list[_Pending[Any]]) -> list[Any]:
        async with db.transaction(self._pool) as conn:
            return [await pending.write(conn) for pending in batch]
