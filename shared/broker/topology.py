"""Exchanges and queues, declared idempotently by whoever uses them.

For each consumer queue ``Q`` the topology is::

    exchange --(bindings)--> Q (quorum) --x-delivery-limit--> Q.dlq
    Q.retry.<ms>ms (quorum, x-message-ttl=<ms>) --expired--> Q
    Q.dlq (quorum): dead letters with the last error in their headers

RabbitMQ here has no delayed-message plugin, so delays are message TTL plus
dead-lettering. A TTL only expires messages at the head of a queue, so one
delay queue per backoff tier (each with a single queue-wide TTL) keeps a short
delay from queueing behind a long one. The tier delay is in the queue name: a
change of delays declares new queues instead of failing on a redeclare with
different arguments.

``x-delivery-limit`` on ``Q`` catches what the consumer cannot: a message whose
handling crashes the process, redelivered again and again, ends in ``Q.dlq``.
Dead-lettering out of the delay queues is ``at-least-once`` so a message in
backoff survives a broker node failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

STRIPE_EVENTS = "stripe.events"
BILLING_EVENTS = "billing.events"
EXCHANGES = (STRIPE_EVENTS, BILLING_EVENTS)

# Redeliveries after which RabbitMQ itself dead-letters a message (a consumer
# crashing on it, or a connection dropping mid-handle, each count as one).
DELIVERY_LIMIT = 20
# Dead-letter queues are read by peeking (get, then return), and every return
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


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


def _quorum(**arguments: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **arguments}


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    return {
        name: await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        for name in EXCHANGES
    }


async def declare_consumer_queue(channel: AbstractChannel, spec: ConsumerQueue) -> AbstractQueue:
    exchanges = await declare_exchanges(channel)
    await channel.declare_queue(
        spec.dead_letter_queue,
        durable=True,
        arguments=_quorum(**{"x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT}),
    )
    for delay in sorted(set(spec.retry_delays_ms)):
        await channel.declare_queue(
            f"{spec.name}.retry.{delay}ms",
            durable=True,
            arguments=_quorum(
                **{
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": spec.name,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            ),
        )
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments=_quorum(
            **{
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": spec.dead_letter_queue,
                "x-delivery-limit": DELIVERY_LIMIT,
            }
        ),
    )
    for binding in spec.bindings:
        await queue.bind(exchanges[binding.exchange], binding.routing_key)
    return queue
