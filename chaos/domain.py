"""What a domain contributes to the chaos run: its part of the reference model.

A domain (``chaos/domains/<name>.py``) subclasses :class:`Domain` and says:

- ``services``: the consumer services it needs; each is SIGKILLed once mid-run.
- ``queues``: its consumer queues. For a queue fed by Stripe events
  (``accepts`` says which types) the run checks that the service's ``inbox``
  holds every such event exactly once, dead letters aside.
- ``events(customer, step)``: the Stripe events a step of a story makes that
  this domain owns (their ``data.object`` built on demand).
- ``extra_events(world)``: events outside the stories, e.g. poison messages
  its service must dead-letter.
- ``expected(world)``: the state its service must hold at the end, as a
  mapping of keys to values (``("subscription", "sub_...") -> (...)``).
  Counting effects (a grant per period, an email per event) is how a double
  effect shows: the expected count is 1.
- ``observed(probe)``: the same mapping, read from its service's schema or
  internal API.
- ``expected_dead_letters(world)``: ``(queue, event id) -> reason`` for every
  dead letter it expects; any other dead letter fails the run.
- ``api_calls(world)``: calls members make through the gateway once the
  events are applied (a credit spend) or before any is sent (a payment
  started; ``answered`` then gets their answers), each with its
  Idempotency-Key, some sent again as a client retries, and the status the
  model says it gets.

Nothing else: the run sends, faults, waits and compares.

Where the product's correct end state depends on the order Stripe's events
arrived in (a failure event that arrives after its invoice was paid opens no
dunning case), the expected value is a :class:`OneOf` listing every correct
outcome; anything else (a double effect included) is a difference.
"""

from __future__ import annotations

from abc import ABC
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import asyncpg

from chaos.story import Customer, Step

State = dict[tuple[str, ...], Any]
ObjectBuilder = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class StripeEvent:
    """One Stripe event; its payload is built only when it is sent (memory)."""

    id: str
    type: str
    created: int
    customer: int  # the story it belongs to (-1: none), for ordering statistics
    build: ObjectBuilder = field(compare=False, repr=False)


class OneOf:
    """An expected value with several correct outcomes, depending on the
    order the events arrived in; equal to any of them, and to nothing else."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = outcomes

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OneOf):
            return self.outcomes == other.outcomes
        return any(other == outcome for outcome in self.outcomes)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return " or ".join(repr(o) for o in self.outcomes)


@dataclass(frozen=True)
class QueueSpec:
    name: str
    schema: str  # where its service's inbox lives
    # Which Stripe event types the queue is bound to; None for a queue fed by
    # domain events (billing.events), whose inbox the domain checks itself.
    accepts: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class ApiCall:
    """A member's call through the gateway, with the answer the model expects.

    One member's calls are made one after the other, in the story's order;
    ``sends`` > 1 sends the same request again (same Idempotency-Key) after
    its answer, as a client that lost the answer does."""

    user_id: str
    method: str
    path: str
    body: dict[str, Any]
    idempotency_key: str
    expect: int  # the HTTP status the reference model says it answers
    sends: int = 1
    # Made before any event is sent (a member starting a payment, whose
    # events then refer to what the call made), rather than once they are applied.
    before_traffic: bool = False


@dataclass
class World:
    """Everything that happened in Stripe: the stories and every event, once each."""

    customers: list[Customer]
    events: list[StripeEvent] = field(default_factory=list)

    def of_type(self, prefix: str) -> Iterator[StripeEvent]:
        return (e for e in self.events if e.type.startswith(prefix))


@dataclass
class Probe:
    """How a domain reads its service's state: the run's database (superuser,
    every schema) and the services' internal APIs (service token)."""

    db: asyncpg.Connection[Any]
    http: aiohttp.ClientSession
    service_urls: dict[str, str]
    service_tokens: dict[str, str]
    # Emails the run's mail server accepted, per domain event id.
    mail_received: Counter[str] = field(default_factory=Counter)

    async def internal(self, service: str, path: str, **params: str) -> Any:
        url = f"{self.service_urls[service]}{path}"
        headers = {"Authorization": f"Bearer {self.service_tokens[service]}"}
        async with self.http.get(url, params=params, headers=headers) as response:
            response.raise_for_status()
            return await response.json()


class Domain(ABC):
    name: ClassVar[str]
    services: ClassVar[tuple[str, ...]] = ()
    queues: ClassVar[tuple[QueueSpec, ...]] = ()

    def events(self, customer: Customer, step: Step) -> list[StripeEvent]:
        return []

    def extra_events(self, world: World) -> list[StripeEvent]:
        return []

    def expected(self, world: World) -> State:
        return {}

    async def observed(self, probe: Probe) -> State:
        return {}

    def expected_dead_letters(self, world: World) -> dict[tuple[str, str], str]:
        return {}

    def api_calls(self, world: World) -> list[ApiCall]:
        return []

    def answered(self, answers: dict[str, Any]) -> None:
        """The JSON answers of the calls made before the traffic, by Idempotency-Key."""
        return None
