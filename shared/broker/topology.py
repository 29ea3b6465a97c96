"""Exchanges and queues, declared idempotently by whoever uses them.

For each consumer queue ``Q`` the topology is::

    exchange --(bindings)--> Q (quorum) --delivery limit--> Q.dlq
    Q.retry.<ms>ms (quorum, message TTL <ms>) --expired--> Q
    Q.dlq (quorum): dead letters with the last error in their headers

RabbitMQ here has no delayed-message plugin, so delays are message TTL plus
dead-lettering. A TTL only expires messages at the head of a queue, so one
delay queue per backoff tier (each with a single queue-wide TTL) keeps a short
delay from queueing behind a long one. The tier delay is in the queue name: a
change of delays makes new queues.

The queues are declared with ``x-queue-type`` only: a declared argument can
never change for the queue's life (declaring it again differently fails), so
the delivery limit, the TTLs, the dead-letter targets and the overflow mode
live in RabbitMQ policies (``policies.py``), which can.

The delivery limit on ``Q`` catches what the consumer cannot: a message whose
handling crashes the process, redelivered again and again, ends in ``Q.dlq``.
Dead-lettering out of the delay queues is ``at-least-once`` so a message in
backoff survives a broker node failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from aiormq.abc import FieldTable

from shared.logging import get_logger

log = get_logger(__name__)

STRIPE_EVENTS = "stripe.events"
BILLING_EVENTS = "billing.events"
EXCHANGES = (STRIPE_EVENTS, BILLING_EVENTS)

# Redeliveries after which RabbitMQ itself dead-letters a message (a consumer
# crashing on it, or a connection dropping mid-handle, each count as one).
DELIVERY_LIMIT = 20
# Dead-letter queues are emptied by the webhooks service into its store; a
# letter it could not store (its database away) goes back, and every return
# counts as a delivery. Quorum queues on RabbitMQ 4 default to a limit of 20
# and would then drop the dead letter; an explicit, practically unreachable
# limit keeps it (on 3.x, -1 would drop on the first return instead).
DEAD_LETTER_DELIVERY_LIMIT = 1_000_000


@dataclass(frozen=True)
class Binding:
    exchange: str
    routing_key: str


@dataclass(frozen=True)
class ConsumerQueue:
    name: str
    bindings: tuple[Binding, ...]
    retry_delays_ms: tuple[int, ...] = field(default=(1_000, 5_000, 30_000, 120_000, 600_000))

    @property
    def dead_letter_queue(self) -> str:
        return dead_letter_queue(self.name)

    def retry_queue(self, attempt: int) -> str:
        """Delay queue for the ``attempt``-th retry (0-based); the last tier repeats."""
        delay = self.retry_delays_ms[min(attempt, len(self.retry_delays_ms) - 1)]
        return f"{self.name}.retry.{delay}ms"

    @property
    def queues(self) -> list[str]:
        """Every queue of the topology, in the order they are declared."""
        tiers = [f"{self.name}.retry.{delay}ms" for delay in sorted(set(self.retry_delays_ms))]
        return [self.dead_letter_queue, *tiers, self.name]


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


# The one argument that never changes; everything else is in a policy.
QUORUM: FieldTable = {"x-queue-type": "quorum"}


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    return {
        name: await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        for name in EXCHANGES
    }


async def declared_by_an_earlier_release(
    connection: AbstractConnection, spec: ConsumerQueue
) -> frozenset[str]:
    """The queues of ``spec`` that exist with more arguments than ``x-queue-type``.

    Releases before the policies declared the delivery limit, TTLs and
    dead-letter targets as arguments. Declaring such a queue without them
    fails, so it is used as it is: its arguments equal what its policy says,
    and take precedence over the policy until the queue is recreated (see
    docs/runbook.md). Each probe runs on a channel of its own, since a failed
    declare closes the channel it was made on.
    """
    found = set()
    for name in spec.queues:
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(name, durable=True, arguments=QUORUM)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            found.add(name)
            log.warning("queue_declared_by_an_earlier_release", queue=name, detail=str(exc))
        finally:
            if not probe.is_closed:
                await probe.close()
    return frozenset(found)


async def declare_consumer_queue(
    channel: AbstractChannel, spec: ConsumerQueue, *, as_they_are: frozenset[str] = frozenset()
) -> AbstractQueue:
    """Declare ``spec``'s queues (those in ``as_they_are`` passively) and bind ``Q``."""
    exchanges = await declare_exchanges(channel)
    queue: AbstractQueue | None = None
    for name in spec.queues:
        if name in as_they_are:
            queue = await channel.declare_queue(name, passive=True)
        else:
            queue = await channel.declare_queue(name, durable=True, arguments=QUORUM)
    assert queue is not None and queue.name == spec.name
    for binding in spec.bindings:
        await queue.bind(exchanges[binding.exchange], binding.routing_key)
    return queue
