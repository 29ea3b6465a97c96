"""A service's consumers, taking messages only while their queues' policies
are in force.

At start every queue is declared at once, so what is routed to it is kept;
the consumers start taking messages once ``policies.verify`` finds every
queue's policy in force (after ``policies.apply`` when the service applies
its own, with ``MIGRATE_ON_START``). Until then ``consuming`` is False, which
``/readyz`` reports, and the check is repeated with backoff, saying why in
the log. Once consuming, the check runs every minute and feeds the
``broker_queue_policy_in_force`` gauge and the log: a policy removed later
does not stop consumption (the queue and its messages are fine; only the
guard against a crash-looping message is gone), it is for an operator to
put back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aio_pika.abc import AbstractRobustConnection

from shared import metrics
from shared.broker import policies
from shared.broker.consumer import Consumer
from shared.broker.policies import Management, ManagementError
from shared.logging import get_logger

log = get_logger(__name__)

_RECHECK_SECONDS = 60.0
_MAX_BACKOFF_SECONDS = 30.0


class ConsumerGroup:
    def __init__(
        self,
        consumers: Sequence[Consumer],
        management: Management,
        *,
        service: str,
        apply_policies: bool,
        recheck_seconds: float = _RECHECK_SECONDS,
    ) -> None:
        self._consumers = list(consumers)
        self._management = management
        self._service = service
        self._apply = apply_policies
        self._recheck = recheck_seconds
        self._wanted = policies.all_policies(c.queue for c in self._consumers)
        self._task: asyncio.Task[None] | None = None
        self._opened = False

    @property
    def consuming(self) -> bool:
        return self._opened and all(c.consuming for c in self._consumers)

    async def start(self, connection: AbstractRobustConnection) -> None:
        for consumer in self._consumers:
            await consumer.declare(connection)
        if await self._in_force(applying=self._apply):
            await self._open()
        self._task = asyncio.create_task(self._watch(), name="queue-policies")

    async def stop_taking(self) -> None:
        """SIGTERM: no consumer takes another message."""
        await asyncio.gather(*(c.stop_taking() for c in self._consumers))

    async def stop(self, grace: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(c.stop(grace) for c in self._consumers))

    async def _open(self) -> None:
        for consumer in self._consumers:
            await consumer.consume()
        self._opened = True

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._opened:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            if await self._in_force(applying=self._apply):
                await self._open()
        while True:
            await asyncio.sleep(self._recheck)
            await self._in_force(applying=False)

    async def _in_force(self, *, applying: bool) -> bool:
        try:
            if applying:
                await policies.apply(self._management, self._wanted)
            problems = await policies.verify(self._management, self._wanted)
        except ManagementError as exc:
            self._observe(set(p.queue for p in self._wanted))
            log.error("queue_policies_unverifiable", consuming=self._opened, error=str(exc))
            return False
        self._observe(set(problems))
        if problems:
            log.error(
                "queue_policies_not_in_force",
                consuming=self._opened,
                problems=[f"{queue}: {why}" for queue, why in problems.items()],
                fix=f"python -m services.{self._service} migrate (docs/runbook.md)",
            )
        return not problems

    def _observe(self, missing: set[str]) -> None:
        for policy in self._wanted:
            metrics.QUEUE_POLICY_IN_FORCE.labels(policy.queue).set(
                0 if policy.queue in missing else 1
            )
